"""Fish counts, instance masks and measurements for a folder of images, an image or a video.

Usage::

    python -m alcfcn_jax.predict --input=photos/ --output_dir=out/       # the shipped model
    python -m alcfcn_jax.predict --input=clip.mp4 --output_dir=out/ --fps=2 --window=60s
    python -m alcfcn_jax.predict --workdir=runs/alcfcn --input=photos/ --output_dir=out/ \
        [--checkpoint=best] [--config.instances.outline=grabcut]

Without ``--workdir`` the DeepFish model shipped in the package is used (``apps.shipped``); with
it, the run's checkpoint and its own ``config.json`` (``--config`` is optional). Videos:
``apps.video`` (sampling, MaxN), ``predict_video`` (their outputs).

Each image (any size, JPEG / PNG / BMP / TIFF / WebP, subfolders with ``--recursive``) is
preprocessed exactly as the checkpoint's training run did (``data.Preprocessing`` recorded with
the checkpoint: letterbox bars cropped or masked, short side resized to
``data.image_short_side`` with PIL bilinear, ImageNet normalisation), the checkpoint's refined
fish probability is computed, fish instances are separated, outlined and measured as
``config.instances`` says (``alcfcn_jax.eval.outlines``: blobs of ``prob > threshold`` split by a
distance-transform watershed where two fish touch, or assigned by the embedding branch; then kept
as blobs or grown to the fish's edges by GrabCut; ``alcfcn_jax.eval.measure`` measures them), and
the results are written to ``--output_dir``:

  * ``fish.csv``      one row per fish: image, fish index, length / width / Feret length / area /
                      orientation / centroid / bounding box in ORIGINAL image pixels (``*_orig``)
                      and in model-input pixels (``*_px``), mean probability;
  * ``images.csv``    one row per image: original and model sizes, fish count (instances),
                      blob count (the evaluation's count), total fish area, mean fish length;
  * ``instances/<name>.png``  (``<name>`` = the input's name with ``.png`` for its extension,
                      or its full name + ``.png`` when two inputs share a stem; images.csv's
                      ``instance_mask`` column says which) 16-bit instance labels at the original size (0 = background,
                      k = fish k of fish.csv);
  * ``overlays/<name>.png``   the image with each fish outlined, numbered, and its length drawn;
  * ``summary.json``  the checkpoint step, the settings and the totals.

All lengths are in pixels: convert with your camera's pixels-per-millimetre at the fish's
distance (a calibration target in the frame), which this tool does not know.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import app
from PIL import Image, ImageDraw

from alcfcn_jax import sharding as shd
from alcfcn_jax.apps import entry, frames
from alcfcn_jax.apps import video as vid
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.eval import inference, outlines, viz
from alcfcn_jax.io import (
    csv_text,
    ensure_writable_dir,
    save_png_atomic,
    write_json_atomic,
    write_text_atomic,
)

IMAGE_EXTENSIONS = pp.IMAGE_EXTENSIONS  # the project's one list (data.preprocess)
_MEASURES = (
    "length",
    "width",
    "feret",
    "area",
    "orientation_deg",
    "centroid_x",
    "centroid_y",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
)
FISH_COLUMNS = (
    ["image", "fish"]
    + [f"{m}_orig" for m in _MEASURES]
    + ["mean_prob"]
    + [f"{m}_px" for m in _MEASURES]
)
IMAGE_COLUMNS = (
    "image",
    "width",
    "height",
    "model_width",
    "model_height",
    "fish_count",
    "blob_count",
    "fish_area_orig",
    "mean_length_orig",
    "instance_mask",
)


def list_images(input_dir: str | os.PathLike, *, recursive: bool = False) -> list[pathlib.Path]:
    """Image files in ``input_dir`` (sorted; by extension, case-insensitive).

    Raises:
      FileNotFoundError: the folder does not exist.
      ValueError: it holds no image files.
    """
    root = pathlib.Path(input_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: folder not found")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"--input {root}: no image files ({', '.join(IMAGE_EXTENSIONS)})"
            + ("" if recursive else "; use --recursive for subfolders")
        )
    return files


def preprocess(
    path: str | os.PathLike, preprocessing: pp.Preprocessing
) -> tuple[np.ndarray, pp.PreparedImage]:
    """Reads an image as the data pipeline does.

    Returns:
      (original uint8 (H,W,3), the prepared model input with its region of the original).

    Raises:
      DataError: the file cannot be read or decoded (the message names it).
    """
    img = pp.load_image(pathlib.Path(path))
    if img.width < 1 or img.height < 1:
        raise DataError(f"{path}: image has no pixels")
    return np.asarray(img, np.uint8), preprocessing.apply(img)


def _to_original(
    labels: np.ndarray, prepared: pp.PreparedImage, size: tuple[int, int]
) -> np.ndarray:
    """Model-input instance labels as a map of the original (H, W) image (0 outside the region)."""
    top, bottom, left, right = prepared.region
    full = np.zeros(size, np.int32)
    full[top:bottom, left:right] = _upsample_labels(labels, (bottom - top, right - left))
    return full


def _upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an int label map to (H, W)."""
    if labels.shape == tuple(size):
        return labels.astype(np.int32)
    im = Image.fromarray(labels.astype(np.int32), mode="I")
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST)).astype(np.int32)


def draw_fish(
    original: np.ndarray, labels: np.ndarray, rows: Sequence[dict[str, Any]], title: str = ""
) -> Image.Image:
    """The overlay: outlines and a light tint per fish, its index and its length line."""
    h, w = original.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    out = viz.color_labels(original, labels, alpha=0.25)
    edge = viz.outline(labels, thickness=thick)
    cols = viz.label_colors(max(int(labels.max()), 1))
    out[edge] = cols[labels[edge] - 1]
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = viz._font(max(10, min(h, w) // 30))
    for r in rows:
        k = int(r["fish"])
        col = tuple(int(c) for c in cols[k - 1])
        xa, ya, xb, yb = (r[f"line_{c}_orig"] for c in ("xa", "ya", "xb", "yb"))
        draw.line([xa, ya, xb, yb], fill=(255, 255, 255), width=thick + 2)
        draw.line([xa, ya, xb, yb], fill=col, width=thick)
        label = f"{k}: {r['length_orig']:.0f}px"
        x, y = r["centroid_x_orig"], r["centroid_y_orig"]
        box = draw.textbbox((x, y), label, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), label, fill=col, font=font)
    header = f"{title}  {len(rows)} fish".strip()
    box = draw.textbbox((4, 4), header, font=font)
    draw.rectangle(box, fill=(0, 0, 0))
    draw.text((4, 4), header, fill=(255, 255, 255), font=font)
    return pil


def _out_name(path: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """Output-relative name of an input image: its path under the input folder, as .png."""
    return path.relative_to(root).with_suffix(".png")


def output_names(
    files: Sequence[pathlib.Path], root: pathlib.Path
) -> dict[pathlib.Path, pathlib.Path]:
    """One distinct output name per input (``instances/`` and ``overlays/``).

    An input's outputs are named ``<path under the input folder>.png`` with its extension
    replaced (``frame1.jpg`` -> ``frame1.png``); when several inputs would share that name
    (``frame1.jpg`` and ``frame1.png``) each keeps its full name instead (``frame1.jpg.png``,
    ``frame1.png.png``), so no output overwrites another. ``images.csv`` names the input and its
    mask file.

    Raises:
      ValueError: two inputs still map to one name (a pathological mix of names).
    """
    plain = {p: _out_name(p, root) for p in files}
    seen: dict[pathlib.Path, int] = {}
    for name in plain.values():
        seen[name] = seen.get(name, 0) + 1
    out = {}
    for p, name in plain.items():
        if seen[name] > 1:
            rel = p.relative_to(root)
            name = rel.with_name(rel.name + ".png")
        out[p] = name
    clashes = len(out) - len(set(out.values()))
    if clashes:
        raise ValueError(f"{root}: {clashes} input image(s) would share an output name")
    return out


def predict_folder(
    model: Any,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    preprocessing: pp.Preprocessing | None = None,
    short_side: int | None = None,
    instances: outlines.InstanceSettings | None = None,
    overlays: bool = True,
    recursive: bool = False,
    skip_unreadable: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    extra_summary: dict[str, Any] | None = None,
    files: Sequence[pathlib.Path] | None = None,
) -> dict[str, Any]:
    """Counts and measures the fish in every image of a folder (see the module docstring).

    Args:
      model: an NNX segmentation model (eval mode is used), e.g. from
        ``eval.inference.restore_model`` or ``apps.shipped.load``.
      input_dir: folder of images (with ``files``: the folder the names are relative to).
      output_dir: where the CSVs, masks and overlays go (created).
      preprocessing: how images become model inputs (``recorded_preprocessing``); None:
        resize the short side to ``short_side`` (None keeps the size), no letterbox handling.
      instances: how fish probability becomes fish (``eval.outlines.InstanceSettings``, from
        ``config.instances``; default: watershed blobs). The ``embedding`` cut needs a model with
        the embedding branch (ValueError otherwise, before any file is read).
      overlays: write overlay PNGs.
      recursive: include subfolders.
      skip_unreadable: log and skip undecodable files instead of stopping at the first.
      batch_size, workers: the pipeline's model batch and post-processing threads
        (``apps.frames.FrameAnalyser``).
      files: analyse these images of ``input_dir`` only (a single image: ``predict`` on a file).

    Returns:
      The summary dict (also written to ``summary.json``), with ``images`` (per-image rows) and
      ``skipped`` (unreadable files).

    Raises:
      DataError: an unreadable image (unless ``skip_unreadable``), naming the file.
    """
    from absl import logging

    settings = instances or outlines.InstanceSettings()
    analyser = frames.FrameAnalyser(model, settings, batch_size=batch_size, workers=workers)
    root = pathlib.Path(input_dir).expanduser()
    out = pathlib.Path(output_dir).expanduser()
    files = list(files) if files is not None else list_images(root, recursive=recursive)
    ensure_writable_dir(out, "--output_dir")
    prep = preprocessing or pp.Preprocessing(short_side, "none")
    names = output_names(files, root)
    skipped: list[str] = []

    def read() -> Iterator[frames.Frame]:
        for i, path in enumerate(files):
            try:
                original, prepared = preprocess(path, prep)
            except DataError as err:
                if not skip_unreadable:
                    raise DataError(f"{err} (use --skip_unreadable to skip such files)") from err
                logging.warning("skipping unreadable image: %s", err)
                skipped.append(str(err))
                continue
            yield frames.Frame(str(path.relative_to(root)), original, prepared, index=i)

    fish_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    progress = frames.Progress(len(files), "images")

    def write_files(result: frames.Result) -> None:
        # A frame's own files, written in the post-processing threads beside the model.
        frame = result.frame
        name = names[root / frame.name]
        full_labels = _to_original(result.labels, frame.prepared, frame.original.shape[:2])
        if full_labels.max() > 65535:
            raise ValueError(f"{frame.name}: more than 65535 fish cannot be stored in a 16-bit PNG")
        save_png_atomic(Image.fromarray(full_labels.astype(np.uint16)), out / "instances" / name)
        if overlays:
            pic = draw_fish(frame.original, full_labels, result.rows, title=frame.name)
            save_png_atomic(pic, out / "overlays" / name)

    for result in analyser.run(read(), finish=write_files):
        frame, rows = result.frame, result.rows
        name = names[root / frame.name]
        image = frame.prepared.image
        fish_rows.extend({"image": frame.name, **r} for r in rows)
        image_rows.append(
            {
                "image": frame.name,
                "instance_mask": str(pathlib.Path("instances") / name),
                "width": frame.original.shape[1],
                "height": frame.original.shape[0],
                "model_width": image.shape[1],
                "model_height": image.shape[0],
                "fish_count": len(rows),
                "blob_count": result.blob_count,
                "fish_area_orig": float(sum(r["area_orig"] for r in rows)),
                "mean_length_orig": (
                    float(np.mean([r["length_orig"] for r in rows])) if rows else float("nan")
                ),
            }
        )
        progress.update()
    progress.close()
    write_text_atomic(
        out / "fish.csv", csv_text(fish_rows, FISH_COLUMNS, float_format=".4g", nonfinite=None)
    )
    write_text_atomic(
        out / "images.csv", csv_text(image_rows, IMAGE_COLUMNS, float_format=".4g", nonfinite=None)
    )
    seconds = time.perf_counter() - t0
    summary = {
        **(extra_summary or {}),
        "input": str(root if len(files) != 1 or files[0].parent != root else files[0]),
        "num_images": len(image_rows),
        "num_fish": len(fish_rows),
        "settings": {**prep.to_dict(), "instances": settings.to_dict()},
        "skipped": skipped,
        "seconds": seconds,
        "images_per_second": len(image_rows) / seconds if seconds > 0 else float("nan"),
        "images": image_rows,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


VIDEO_FRAME_COLUMNS = ("video", "frame", "time_s", "count", "smoothed_count", "blob_count")
VIDEO_FISH_COLUMNS = ("video", "frame", "time_s", *FISH_COLUMNS[1:])
WINDOW_COLUMNS = (
    "video",
    "window_start_s",
    "window_end_s",
    "frames",
    "maxn",
    "maxn_frame",
    "maxn_time_s",
    "maxn_raw",
    "maxn_raw_frame",
    "maxn_raw_time_s",
)


def predict_video(
    model: Any,
    path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    preprocessing: pp.Preprocessing | None = None,
    instances: outlines.InstanceSettings | None = None,
    every: int = 1,
    fps: float = 0.0,
    smooth: int = 5,
    window: float = 0.0,
    overlay_video: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    extra_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts and measures the fish in the sampled frames of a video (``apps.video``).

    Writes ``frames.csv`` (video, frame, time, count, smoothed count, blob count), ``fish.csv``
    (one row per fish and frame, with its measurements), ``windows.csv`` (with ``window``: MaxN
    per window), ``summary.json`` (MaxN smoothed and raw with their frame and time, the settings,
    whether the video ended early and where) and, with ``overlay_video``, ``overlay.mp4``. A
    video that cannot be read writes nothing (:class:`~alcfcn_jax.apps.video.VideoError`); one
    that ends early keeps what was read and says so.

    Args:
      model, preprocessing, instances, batch_size, workers: as :func:`predict_folder`.
      path: the video file.
      output_dir: the output folder (created).
      every, fps: the sampling (``apps.video.sampling_step``).
      smooth: frames of the count smoothing for MaxN (1 = none).
      window: seconds per MaxN window (0 = none).
      overlay_video: also write the sampled frames with their fish drawn.

    Returns:
      The summary (also written to ``summary.json``).
    """
    settings = instances or outlines.InstanceSettings()
    prep = preprocessing or pp.Preprocessing(None, "none")
    video = vid.VideoFrames(path, prep, every=every, fps=fps)  # VideoError before any output
    if smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {smooth}")
    analyser = frames.FrameAnalyser(model, settings, batch_size=batch_size, workers=workers)
    out = pathlib.Path(output_dir).expanduser()
    ensure_writable_dir(out, "--output_dir")
    name = video.path.name
    overlay = (
        vid.OverlayVideo(out / "overlay.mp4", video.info.fps / video.step)
        if overlay_video
        else None
    )
    frame_rows: list[dict[str, Any]] = []
    fish_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    progress = frames.Progress(video.expected or None, "frames")
    try:
        for result in analyser.run(video):
            frame = result.frame
            frame_rows.append(
                {
                    "video": name,
                    "frame": frame.index,
                    "time_s": frame.time,
                    "count": len(result.rows),
                    "blob_count": result.blob_count,
                }
            )
            fish_rows.extend(
                {"video": name, "frame": frame.index, "time_s": frame.time, **r}
                for r in result.rows
            )
            if overlay is not None:
                full = _to_original(result.labels, frame.prepared, frame.original.shape[:2])
                title = f"{name} frame {frame.index}" + (
                    f" {frame.time:.2f}s" if frame.time is not None else ""
                )
                overlay.write(np.asarray(draw_fish(frame.original, full, result.rows, title)))
            progress.update()
    except BaseException:
        if overlay is not None:
            overlay.close(keep=False)
        raise
    progress.close()
    seconds = time.perf_counter() - t0
    counts = summarize_counts_of(frame_rows, smooth=smooth, window=window)
    for row, value in zip(frame_rows, counts["smoothed_counts"]):
        row["smoothed_count"] = value
    write_text_atomic(
        out / "frames.csv",
        csv_text(frame_rows, VIDEO_FRAME_COLUMNS, float_format=".6g", nonfinite=None),
    )
    write_text_atomic(
        out / "fish.csv",
        csv_text(fish_rows, VIDEO_FISH_COLUMNS, float_format=".4g", nonfinite=None),
    )
    if window:
        write_text_atomic(
            out / "windows.csv",
            csv_text(
                [_window_row(name, w) for w in counts["windows"]],
                WINDOW_COLUMNS,
                float_format=".6g",
                nonfinite=None,
            ),
        )
    if overlay is not None:
        overlay.close(keep=True)
    summary = {
        **(extra_summary or {}),
        "input": str(video.path),
        "video": dataclasses.asdict(video.info),
        "every": video.step,
        "frames_decoded": video.decoded,
        "frames_analysed": len(frame_rows),
        "num_fish_rows": len(fish_rows),
        "complete": not video.ended_early,
        "stop_reason": video.stop_reason,
        "maxn_reported": "maxn (the smoothed counts); maxn_raw is the raw per-frame maximum",
        **{k: v for k, v in counts.items() if k != "smoothed_counts"},
        "settings": {**prep.to_dict(), "instances": settings.to_dict()},
        "seconds": seconds,
        "frames_per_second": len(frame_rows) / seconds if seconds > 0 else float("nan"),
    }
    if video.ended_early:
        from absl import logging

        logging.warning("%s: %s", video.path, video.stop_reason)
    write_json_atomic(out / "summary.json", summary)
    return summary


def summarize_counts_of(
    frame_rows: Sequence[dict[str, Any]], *, smooth: int, window: float
) -> dict[str, Any]:
    """``apps.video.summarize_counts`` of the rows of ``frames.csv``."""
    return vid.summarize_counts(
        [r["frame"] for r in frame_rows],
        [r["time_s"] for r in frame_rows],
        [r["count"] for r in frame_rows],
        smooth=smooth,
        window=window,
    )


def _window_row(video_name: str, w: dict[str, Any]) -> dict[str, Any]:
    return {
        "video": video_name,
        "window_start_s": w["start_s"],
        "window_end_s": w["end_s"],
        "frames": w["frames"],
        "maxn": w["maxn"]["value"],
        "maxn_frame": w["maxn"]["frame"],
        "maxn_time_s": w["maxn"]["time_s"],
        "maxn_raw": w["maxn_raw"]["value"],
        "maxn_raw_frame": w["maxn_raw"]["frame"],
        "maxn_raw_time_s": w["maxn_raw"]["time_s"],
    }


def main(argv: Sequence[str]) -> None:
    """absl entry point (flags defined in :func:`define_flags`)."""
    from absl import flags, logging

    from alcfcn_jax.apps import shipped

    config, workdir, which = entry.start(argv)
    f = flags.FLAGS
    path = pathlib.Path(f.input).expanduser()
    is_video = path.is_file() and vid.is_video(path)
    video_flags = [n for n in ("every", "fps", "window", "overlay_video") if f[n].present]
    if video_flags and not is_video:
        raise app.UsageError(f"--{video_flags[0]} applies to a video; --input {path} is not one")
    if f.recursive and is_video:
        raise app.UsageError("--recursive applies to a folder; --input is a video")
    if path.is_file() and not is_video and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise app.UsageError(
            f"--input {path}: neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a video "
            f"({', '.join(vid.VIDEO_EXTENSIONS)})"
        )
    if not path.exists():
        raise app.UsageError(f"--input {path}: no such file or folder")
    # Every process loads the model onto its own first device; in a multi-process job process 0
    # does the work and writes every file while the others wait.
    if workdir:
        model, step, meta = inference.restore_model(config, workdir, which)
        preprocessing = inference.recorded_preprocessing(meta, config)
        source = {"workdir": workdir, "checkpoint": str(which), "step": int(step)}
    else:
        model, record = shipped.load(config=config)
        preprocessing = pp.Preprocessing.from_dict(record["preprocessing"])
        source = {"model": "shipped", "step": record["checkpoint_step"]}
        logging.info("No --workdir: using the %s", shipped.describe(record))
    if jax.process_index() != 0:
        shd.barrier("predict_done")
        return
    common = dict(
        preprocessing=preprocessing,
        instances=outlines.InstanceSettings.from_config(config.instances),
        batch_size=f.batch_size,
        workers=f.workers or None,
        extra_summary=source,
    )
    if is_video:
        summary = predict_video(
            model,
            path,
            f.output_dir,
            every=f.every,
            fps=f.fps,
            smooth=f.smooth,
            window=vid.parse_window(f.window),
            overlay_video=f.overlay_video,
            **common,
        )
        maxn = summary["maxn"]
        line = (
            f"{summary['frames_analysed']} frames of {path.name}: MaxN {maxn['value']:g} at frame "
            f"{maxn['frame']} (smoothed over {summary['smooth']} frames; raw "
            f"{summary['maxn_raw']['value']:g}) -> {f.output_dir}"
            + ("" if summary["complete"] else f"; {summary['stop_reason']}")
        )
    else:
        files = [path] if path.is_file() else None
        summary = predict_folder(
            model,
            path.parent if files else path,
            f.output_dir,
            files=files,
            overlays=f.overlays,
            recursive=f.recursive,
            skip_unreadable=f.skip_unreadable,
            **common,
        )
        line = f"{summary['num_fish']} fish in {summary['num_images']} images -> {f.output_dir}"
    logging.info(line)
    print(line)
    shd.barrier("predict_done")


def define_flags() -> None:
    """Defines the command-line flags of ``python -m alcfcn_jax.predict`` (the instance
    settings are ``--config.instances.*``)."""
    from absl import flags

    entry.define_flags(config_help="The training config of the run", workdir_required=False)
    flags.DEFINE_string("input", None, "A folder of images, an image, or a video.")
    flags.DEFINE_string("output_dir", None, "Where to write CSVs, masks and overlays.")
    flags.DEFINE_integer("batch_size", 8, "Frames per model call.")
    flags.DEFINE_integer("workers", 0, "Post-processing threads (0: one per CPU).")
    flags.DEFINE_bool("overlays", True, "Images: write overlay PNGs.")
    flags.DEFINE_bool("recursive", False, "Folders: include images in subfolders.")
    flags.DEFINE_bool("skip_unreadable", False, "Folders: skip undecodable images.")
    flags.DEFINE_integer("every", 1, "Videos: analyse every N-th frame.")
    flags.DEFINE_float("fps", 0.0, "Videos: analyse about F frames a second (overrides --every).")
    flags.DEFINE_integer("smooth", 5, "Videos: MaxN over counts smoothed across N frames (1: raw).")
    flags.DEFINE_string("window", "0", "Videos: MaxN per time window too (60s, 2m, 1h; 0: none).")
    flags.DEFINE_bool("overlay_video", False, "Videos: also write overlay.mp4.")
    flags.mark_flags_as_required(["input", "output_dir"])
