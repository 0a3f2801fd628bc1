"""Throughput of ``predict`` against the bare jitted model forward, in one run.

    python -m benchmarks.predict_throughput [--frames=80] [--batch_size=8] [--outlines=blobs,grabcut]

The model is the frames model (EfficientNet-Lite0 trunk with its ImageNet weights and the frames
heads; the shipped model when the package has one), at the frames' input size (the DeepFish
frames shipped in the package, letterbox cropped, short side 304: 541x304). Measured, on every
local device (the batch sharded over them):

  * ``forward``: the jitted model forward alone on batches already prepared in memory (the
    upper bound: what the pipeline would reach if decoding and post-processing were free);
  * ``folder``: ``predict_folder`` on those frames as JPEG files (decode, resize, forward,
    blobs, instances and outlines, measurements, CSVs, masks; no overlay PNGs);
  * ``video``: ``predict_video`` on the same frames as an MPEG-4 video.

Each pipeline figure is frames/s over the whole call (compilation excluded: a warm-up call
first) and its ratio to ``forward``. Results: ``benchmarks/results/predict_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from alcfcn_jax.data import preprocess as pp
from benchmarks.common import write_video

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _model():
    from alcfcn_jax.apps import shipped

    try:
        model, record = shipped.load()
        return model, pp.Preprocessing.from_dict(record["preprocessing"]), "shipped"
    except shipped.ShippedModelError:
        from configs import frames

        config = frames.get_config()
        return shipped._pretrained(config), pp.Preprocessing(304, "crop"), "frames (random heads)"


def _frames(n: int) -> list[pathlib.Path]:
    from alcfcn_jax.data import SAMPLE_DIR

    files = sorted((SAMPLE_DIR / "train" / "images").glob("*.jpg"))
    files += sorted((SAMPLE_DIR / "val" / "images").glob("*.jpg"))
    return files[:n]


def run(n_frames: int, batch_size: int, outlines: list[str], repeats: int = 2) -> dict:
    from alcfcn_jax.apps import frames as frames_mod
    from alcfcn_jax.apps import predict
    from alcfcn_jax.eval.outlines import InstanceSettings

    model, prep, which = _model()
    files = _frames(n_frames)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="predict_bench_"))
    try:
        folder = tmp / "frames"
        folder.mkdir()
        for f in files:
            shutil.copy(f, folder / f.name)
        clip = tmp / "clip.mp4"
        write_video(files, clip)
        analyser = frames_mod.FrameAnalyser(model, InstanceSettings(), batch_size=batch_size)
        images = [prep.apply(Image.open(f).convert("RGB")).image for f in files]
        b = analyser.batch_size
        batches = [
            np.stack(images[i : i + b] + [images[0]] * max(0, i + b - len(images)))
            for i in range(0, len(images), b)
        ]
        analyser.forward(batches[0])  # compile
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for x in batches:
                analyser.forward(x)
            best = min(best, time.perf_counter() - t0)
        forward_fps = len(images) / best
        result = {
            "device": jax.devices()[0].device_kind,
            "platform": jax.devices()[0].platform,
            "local_devices": jax.local_device_count(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "model": which,
            "frames": len(images),
            "input_size": list(images[0].shape[:2]),
            "batch_size": b,
            "forward_fps": forward_fps,
            "pipelines": {},
        }
        for outline in outlines:
            settings = InstanceSettings(outline=outline)
            for kind in ("folder", "video"):
                best = float("inf")
                for r in range(repeats + 1):  # the first call compiles
                    out = tmp / f"out_{kind}_{outline}_{r}"
                    t0 = time.perf_counter()
                    if kind == "folder":
                        predict.predict_folder(
                            model,
                            folder,
                            out,
                            preprocessing=prep,
                            instances=settings,
                            overlays=False,
                            batch_size=batch_size,
                        )
                    else:
                        predict.predict_video(
                            model,
                            clip,
                            out,
                            preprocessing=prep,
                            instances=settings,
                            batch_size=batch_size,
                        )
                    if r:
                        best = min(best, time.perf_counter() - t0)
                fps = len(images) / best
                result["pipelines"][f"{kind}/{outline}"] = {
                    "fps": fps,
                    "ratio_to_forward": fps / forward_fps,
                }
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=80)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--outlines", default="blobs,grabcut")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    result = run(args.frames, args.batch_size, [o for o in args.outlines.split(",") if o])
    name = f"predict_{result['platform']}-{result['local_devices']}dev.json"
    path = pathlib.Path(args.out) if args.out else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(path)


if __name__ == "__main__":
    main()
