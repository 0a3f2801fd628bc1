"""Video input of predict (apps/video.py, apps/predict.predict_video): per-frame counts equal the
image path's, MaxN raw and smoothed, per-window MaxN, sampling, and every bad input."""

import csv
import json
import wave

import cv2
import numpy as np
import pytest
from PIL import Image

from alcfcn_jax.apps import predict, video
from alcfcn_jax.data import preprocess as pp
from tests.test_predict import ThresholdModel, ellipse

# Fish per frame of the drawn clip: a one-frame spike of 4 at frame 5 (a false alarm's look).
COUNTS = [1, 1, 2, 2, 2, 4, 2, 3, 3, 3, 1, 0]


def _frame(i, n, h=72, w=128):
    """Frame ``i``: ``n`` bright fish on dark water, drifting right a little each frame."""
    img = np.full((h, w, 3), 12, np.uint8)
    for k in range(n):
        fish = ellipse(h, w, 14 + 14 * (k % 4), 12 + 28 * k + 2 * i, 9, 4)
        img[fish] = (230, 220, 210)
    return img


def _write(path, frames, fourcc="FFV1", fps=10.0):
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert out.isOpened()
    for f in frames:
        out.write(np.ascontiguousarray(f[..., ::-1]))
    out.release()
    return path


@pytest.fixture()
def clip(tmp_path):
    return _write(tmp_path / "clip.avi", [_frame(i, n) for i, n in enumerate(COUNTS)])


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_video_counts_equal_the_image_path_and_maxn(clip, tmp_path):
    out = tmp_path / "out"
    summary = predict.predict_video(ThresholdModel(), clip, out, smooth=3, batch_size=4)
    rows = _csv(out / "frames.csv")
    assert [int(r["count"]) for r in rows] == COUNTS
    assert [int(r["frame"]) for r in rows] == list(range(len(COUNTS)))
    assert float(rows[3]["time_s"]) == pytest.approx(0.3)
    # The same frames, decoded from the video, as images through predict_folder.
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    cap = cv2.VideoCapture(str(clip))
    for i in range(len(COUNTS)):
        ok, bgr = cap.read()
        assert ok
        Image.fromarray(bgr[..., ::-1]).save(frames_dir / f"f{i:03d}.png")
    images = predict.predict_folder(ThresholdModel(), frames_dir, tmp_path / "img", batch_size=4)
    assert [r["fish_count"] for r in images["images"]] == COUNTS
    fish_video = _csv(out / "fish.csv")
    fish_images = _csv(tmp_path / "img" / "fish.csv")
    assert [r["length_orig"] for r in fish_video] == [r["length_orig"] for r in fish_images]
    # MaxN: raw 4 at the one-frame spike; smoothed over 3 frames the spike is 2 and the MaxN 3,
    # first at frame 6 (its neighbours 4 and 3).
    assert summary["maxn_raw"] == {"value": 4.0, "frame": 5, "time_s": pytest.approx(0.5)}
    assert summary["maxn"]["value"] == 3.0 and summary["maxn"]["frame"] == 6
    assert summary["complete"] and summary["frames_analysed"] == len(COUNTS)
    assert json.loads((out / "summary.json").read_text())["maxn"]["value"] == 3.0


def test_sampling_windows_and_overlay_video(clip, tmp_path):
    out = tmp_path / "out"
    summary = predict.predict_video(
        ThresholdModel(), clip, out, every=2, smooth=1, window=0.6, overlay_video=True
    )
    rows = _csv(out / "frames.csv")
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8, 10]
    assert [int(r["count"]) for r in rows] == COUNTS[::2]
    windows = _csv(out / "windows.csv")
    # 0.6 s windows of a 10 fps clip: frames 0-4 (counts 1, 2, 2) and 6-10 (2, 3, 1).
    assert [(float(w["window_start_s"]), float(w["maxn"])) for w in windows] == [
        (0.0, 2.0),
        (0.6, 3.0),
    ]
    assert int(windows[1]["maxn_frame"]) == 8
    assert summary["every"] == 2 and summary["maxn"] == summary["maxn_raw"]  # smooth 1 = raw
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(rows)
    assert not list(out.glob(".*tmp*"))
    # --fps: about 5 frames a second of a 10 fps clip is every 2nd frame.
    info = video.VideoFrames(clip, pp.Preprocessing(None, "none")).info
    assert video.sampling_step(info, fps=5.0) == 2 and video.sampling_step(info, every=3) == 3


def test_smoothed_counts_and_windows_by_hand():
    counts = [0, 5, 0, 2, 2, 2, 0]
    np.testing.assert_array_equal(video.smoothed_counts(counts, 3), [2.5, 0, 2, 2, 2, 2, 1])
    np.testing.assert_array_equal(video.smoothed_counts(counts, 1), counts)
    s = video.summarize_counts(list(range(7)), [i * 10.0 for i in range(7)], counts, smooth=3)
    assert s["maxn_raw"]["value"] == 5 and s["maxn_raw"]["frame"] == 1
    assert s["maxn"]["value"] == 2.5 and s["maxn"]["frame"] == 0
    assert video.parse_window("60s") == 60 and video.parse_window("2m") == 120
    assert video.parse_window("0") == 0
    with pytest.raises(ValueError, match="--window"):
        video.parse_window("soon")


def test_unreadable_empty_and_audio_only_files_write_nothing(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video at all" * 100)
    sound = tmp_path / "sound.mp4"  # a WAV file: a stream, but no video in it
    with wave.open(str(tmp_path / "s.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    sound.write_bytes((tmp_path / "s.wav").read_bytes())
    empty = tmp_path / "empty.avi"
    out = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    out.release()
    for bad, match in [
        (junk, "cannot be opened"),
        (sound, "cannot be opened|no frame"),
        (empty, "cannot be opened|no frame"),
        (tmp_path / "missing.mp4", "no such file"),
    ]:
        dest = tmp_path / f"out_{bad.stem}"
        with pytest.raises(video.VideoError, match=match):
            predict.predict_video(ThresholdModel(), bad, dest)
        assert not dest.exists()


def test_a_truncated_video_keeps_what_was_read(tmp_path):
    frames = [_frame(i, COUNTS[i % len(COUNTS)]) for i in range(40)]
    whole = _write(tmp_path / "whole.avi", frames, fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    summary = predict.predict_video(ThresholdModel(), cut, out)
    assert not summary["complete"] and "stopped at frame" in summary["stop_reason"]
    assert 0 < summary["frames_analysed"] < 40
    rows = _csv(out / "frames.csv")
    assert len(rows) == summary["frames_analysed"]
    assert [int(r["count"]) for r in rows] == [COUNTS[i % len(COUNTS)] for i in range(len(rows))]


def test_a_huge_frame_is_resized_by_the_recorded_preprocessing(tmp_path):
    big = [np.zeros((3000, 4000, 3), np.uint8) for _ in range(2)]
    for img in big:
        img[1200:1800, 1000:2400] = 230  # one large fish
    clip = _write(tmp_path / "big.avi", big, fourcc="MJPG")
    summary = predict.predict_video(
        ThresholdModel(), clip, tmp_path / "out", preprocessing=pp.Preprocessing(96, "none")
    )
    assert summary["frames_analysed"] == 2 and summary["maxn"]["value"] == 1.0
    rows = _csv(tmp_path / "out" / "fish.csv")
    # Measured in the original 4000x3000 pixels: the fish is 1400 pixels long.
    assert float(rows[0]["length_orig"]) == pytest.approx(1400, rel=0.05)
