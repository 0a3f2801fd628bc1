"""Fish counts, instance masks and measurements for a folder of images.

Usage::

    python -m alcfcn_jax.predict --config=configs/deepfish.py --workdir=runs/alcfcn \
        --input_dir=photos/ --output_dir=out/ [--checkpoint=best] [--config.instances.outline=grabcut]

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

import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw

from alcfcn_jax import sharding as shd
from alcfcn_jax.apps import entry
from alcfcn_jax.apps import instances as inst_app
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.eval import inference, measure, metrics, outlines, viz
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
        raise FileNotFoundError(f"--input_dir {root}: folder not found")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(
            f"--input_dir {root}: no image files ({', '.join(IMAGE_EXTENSIONS)})"
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
    extra_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts and measures the fish in every image of a folder (see the module docstring).

    Args:
      model: an NNX segmentation model (eval mode is used), e.g. from
        ``eval.inference.restore_model``.
      input_dir: folder of images.
      output_dir: where the CSVs, masks and overlays go (created).
      preprocessing: how images become model inputs (``recorded_preprocessing``); None:
        resize the short side to ``short_side`` (None keeps the size), no letterbox handling.
      instances: how fish probability becomes fish (``eval.outlines.InstanceSettings``, from
        ``config.instances``; default: watershed blobs). The ``embedding`` cut needs a model with
        the embedding branch (ValueError otherwise, before any file is read).
      overlays: write overlay PNGs.
      recursive: include subfolders.
      skip_unreadable: log and skip undecodable files instead of stopping at the first.

    Returns:
      The summary dict (also written to ``summary.json``), with ``images`` (per-image rows) and
      ``skipped`` (unreadable files).

    Raises:
      DataError: an unreadable image (unless ``skip_unreadable``), naming the file.
    """
    from absl import logging

    settings = instances or outlines.InstanceSettings()
    instance_fn = inst_app.make_instance_fn(model, settings)
    root = pathlib.Path(input_dir).expanduser()
    out = pathlib.Path(output_dir).expanduser()
    files = list_images(root, recursive=recursive)
    ensure_writable_dir(out, "--output_dir")
    prep = preprocessing or pp.Preprocessing(short_side, "none")
    fish_rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    t0 = time.perf_counter()
    names = output_names(files, root)
    for path in files:
        name = names[path]
        image_name = str(path.relative_to(root))
        try:
            original, prepared = preprocess(path, prep)
        except DataError as err:
            if not skip_unreadable:
                raise DataError(f"{err} (use --skip_unreadable to skip such files)") from err
            logging.warning("skipping unreadable image: %s", err)
            skipped.append(str(err))
            continue
        image = prepared.image
        # Letterbox bars kept but masked (prepared.valid) are never fish.
        labels, prob = instance_fn(image, prepared.valid)
        top, bottom, left, right = prepared.region
        rows = measure.measure_fish(
            labels, prob, original_size=(bottom - top, right - left), origin=(top, left)
        )
        blob_count = int(metrics.count_blobs(prob > settings.threshold))
        for r in rows:
            fish_rows.append({"image": image_name, **r})
        image_rows.append(
            {
                "image": image_name,
                "instance_mask": str(pathlib.Path("instances") / name),
                "width": original.shape[1],
                "height": original.shape[0],
                "model_width": image.shape[1],
                "model_height": image.shape[0],
                "fish_count": len(rows),
                "blob_count": blob_count,
                "fish_area_orig": float(sum(r["area_orig"] for r in rows)),
                "mean_length_orig": (
                    float(np.mean([r["length_orig"] for r in rows])) if rows else float("nan")
                ),
            }
        )
        full_labels = _to_original(labels, prepared, original.shape[:2])
        if full_labels.max() > 65535:
            raise ValueError(f"{path}: more than 65535 fish cannot be stored in a 16-bit PNG")
        save_png_atomic(Image.fromarray(full_labels.astype(np.uint16)), out / "instances" / name)
        if overlays:
            pic = draw_fish(original, full_labels, rows, title=image_name)
            save_png_atomic(pic, out / "overlays" / name)
    write_text_atomic(
        out / "fish.csv", csv_text(fish_rows, FISH_COLUMNS, float_format=".4g", nonfinite=None)
    )
    write_text_atomic(
        out / "images.csv", csv_text(image_rows, IMAGE_COLUMNS, float_format=".4g", nonfinite=None)
    )
    seconds = time.perf_counter() - t0
    summary = {
        **(extra_summary or {}),
        "input_dir": str(root),
        "num_images": len(image_rows),
        "num_fish": len(fish_rows),
        "settings": {**prep.to_dict(), "instances": settings.to_dict()},
        "skipped": skipped,
        "seconds": seconds,
        "images": image_rows,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def main(argv: Sequence[str]) -> None:
    """absl entry point (flags defined in :func:`define_flags`)."""
    from absl import flags, logging

    config, workdir, which = entry.start(argv)
    f = flags.FLAGS
    # Every process restores onto its own first device; in a multi-process job process 0 does
    # the (single-device) work and writes every file while the others wait.
    model, step, meta = inference.restore_model(config, workdir, which)
    if jax.process_index() != 0:
        shd.barrier("predict_done")
        return
    summary = predict_folder(
        model,
        f.input_dir,
        f.output_dir,
        preprocessing=inference.recorded_preprocessing(meta, config),
        instances=outlines.InstanceSettings.from_config(config.instances),
        overlays=f.overlays,
        recursive=f.recursive,
        skip_unreadable=f.skip_unreadable,
        extra_summary={"workdir": workdir, "checkpoint": str(which), "step": int(step)},
    )
    logging.info(
        "%d fish in %d images -> %s", summary["num_fish"], summary["num_images"], f.output_dir
    )
    print(f"{summary['num_fish']} fish in {summary['num_images']} images -> {f.output_dir}")
    shd.barrier("predict_done")


def define_flags() -> None:
    """Defines the command-line flags of ``python -m alcfcn_jax.predict`` (the instance
    settings are ``--config.instances.*``)."""
    from absl import flags

    entry.define_flags(config_help="The training config of the run")
    flags.DEFINE_string("input_dir", None, "Folder of images to analyse.")
    flags.DEFINE_string("output_dir", None, "Where to write CSVs, masks and overlays.")
    flags.DEFINE_bool("overlays", True, "Write overlay PNGs.")
    flags.DEFINE_bool("recursive", False, "Include images in subfolders.")
    flags.DEFINE_bool("skip_unreadable", False, "Skip undecodable images instead of stopping.")
    flags.mark_flags_as_required(["input_dir", "output_dir"])
