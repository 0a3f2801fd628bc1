"""Raw against smoothed MaxN on clips made of consecutive DeepFish frames.

    python -m benchmarks.maxn_clips --data_dir=$D [--clips=4] [--length=40] [--fps=5] [--smooth=5]

A folder of YOLO-labelled frames whose names carry the source video and frame number
(``<video>_f<number>_jpg.rf.<hash>.jpg``, the DeepFish Roboflow export) holds stretches of
consecutive frames of one camera. For the ``clips`` videos with the most frames, the first run of
``length`` frames whose numbers step by at most ``max_gap`` is written as an MPEG-4 clip at
``fps`` frames a second and counted by ``predict`` with the shipped model (every frame). The true
per-frame counts are the label files' box counts. Per clip: the true MaxN, the raw MaxN (the
largest per-frame count) and the smoothed MaxN (``predict``'s summary: counts smoothed by a
centred median over ``smooth`` frames), each with its frame, and the per-frame count error of the
raw and smoothed counts. The clips mix the training and validation splits of the frames model
(the share of validation frames is reported), so the figures show how the two MaxN behave, not
the model's accuracy. Results: ``benchmarks/results/maxn_clips.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import tempfile

import numpy as np

from alcfcn_jax.data import boxes
from benchmarks.common import write_video

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
_NAME = re.compile(r"^(?P<video>.+)_f(?P<frame>\d+)_jpg")


def consecutive_runs(
    names: list[str], *, length: int, max_gap: int
) -> dict[str, list[tuple[int, str]]]:
    """Per video, the first run of ``length`` frames whose numbers step by ``<= max_gap``."""
    by_video: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for name in names:
        m = _NAME.match(name)
        if m:
            by_video[m["video"]].append((int(m["frame"]), name))
    runs = {}
    for video, frames in by_video.items():
        frames.sort()
        start = 0
        for i in range(1, len(frames) + 1):
            if i == len(frames) or frames[i][0] - frames[i - 1][0] > max_gap:
                if i - start >= length:
                    runs[video] = frames[start : start + length]
                    break
                start = i
    return runs


def run(data_dir: str, clips: int, length: int, max_gap: int, fps: float, smooth: int) -> dict:
    from alcfcn_jax.apps import predict, shipped, video
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.eval.outlines import InstanceSettings

    root = pathlib.Path(data_dir)
    images = sorted(p.name for p in (root / "images").iterdir())
    runs = consecutive_runs(images, length=length, max_gap=max_gap)
    counts = collections.Counter(_NAME.match(n)["video"] for n in images if _NAME.match(n))
    chosen = [v for v, _ in counts.most_common() if v in runs][:clips]
    model, record = shipped.load()
    prep = pp.Preprocessing.from_dict(record["preprocessing"])
    settings = InstanceSettings.from_config(shipped.shipped_config().instances)
    rows = []
    with tempfile.TemporaryDirectory(prefix="maxn_clips_") as tmp:
        for name in chosen:
            frames = runs[name]
            files = [root / "images" / n for _, n in frames]
            truth = np.array(
                [
                    len(boxes.read_yolo(root / "labels" / (pathlib.Path(n).stem + ".txt")))
                    for _, n in frames
                ]
            )
            clip = pathlib.Path(tmp) / f"{name}.mp4"
            write_video(files, clip, fps)
            summary = predict.predict_video(
                model,
                clip,
                pathlib.Path(tmp) / name,
                preprocessing=prep,
                instances=settings,
                smooth=smooth,
            )
            per_frame = [int(r["count"]) for r in _rows(pathlib.Path(tmp) / name / "frames.csv")]
            raw = np.array(per_frame)
            smoothed = video.smoothed_counts(raw, smooth)
            rows.append(
                {
                    "video": name,
                    "frames": len(frames),
                    "frame_numbers": [frames[0][0], frames[-1][0]],
                    "val_share": float(
                        np.mean([boxes.in_val(pathlib.Path(n).stem, 20) for _, n in frames])
                    ),
                    "true_maxn": int(truth.max()),
                    "true_maxn_frame": int(truth.argmax()),
                    "raw_maxn": int(summary["maxn_raw"]["value"]),
                    "raw_maxn_frame": summary["maxn_raw"]["frame"],
                    "smoothed_maxn": int(summary["maxn"]["value"]),
                    "smoothed_maxn_frame": summary["maxn"]["frame"],
                    "raw_count_mae": float(np.abs(raw - truth).mean()),
                    "smoothed_count_mae": float(np.abs(smoothed - truth).mean()),
                    "true_counts": truth.tolist(),
                    "raw_counts": raw.tolist(),
                }
            )
    return {"fps": fps, "smooth": smooth, "length": length, "max_gap": max_gap, "clips": rows}


def _rows(path: pathlib.Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(result: dict) -> str:
    lines = [
        "| clip (frames) | val share | true MaxN | raw MaxN (frame) | smoothed MaxN (frame) | count MAE raw / smoothed |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["clips"]:
        lines.append(
            f"| {r['video']} (f{r['frame_numbers'][0]}-f{r['frame_numbers'][1]}, {r['frames']}) | "
            f"{r['val_share']:.2f} | {r['true_maxn']} | {r['raw_maxn']} ({r['raw_maxn_frame']}) | "
            f"{r['smoothed_maxn']} ({r['smoothed_maxn_frame']}) | "
            f"{r['raw_count_mae']:.2f} / {r['smoothed_count_mae']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--max_gap", type=int, default=3)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--smooth", type=int, default=5)
    args = parser.parse_args()
    result = run(args.data_dir, args.clips, args.length, args.max_gap, args.fps, args.smooth)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "maxn_clips.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
