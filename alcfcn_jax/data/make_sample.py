"""Rebuilds the small real sample shipped in ``alcfcn_jax/data/sample/``.

Fixed rule: for each of the 20 habitats, sort that habitat's frames by name and take
``per_habitat`` of them evenly spaced (the k-th at index ``int((k + 0.5) * n / per_habitat)``);
even k go to ``train/``, odd k to ``val/``. Files are copied unchanged (360x360 letterboxed JPEG
and YOLO labels in that frame); the box reader crops the bars at read time.

Usage: ``python -m alcfcn_jax.data.make_sample /work/shared/data/deepfish_frames``
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import shutil

from alcfcn_jax.data.boxes import frame_id, list_images
from alcfcn_jax.data.preprocess import habitat_of

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample"


def select(src: pathlib.Path, per_habitat: int = 8) -> dict[str, list[pathlib.Path]]:
    """The sample's images by split, chosen by the fixed rule (module doc)."""
    by_hab: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
    for p in list_images(src):
        by_hab[habitat_of(frame_id(p.stem))].append(p)
    out: dict[str, list[pathlib.Path]] = {"train": [], "val": []}
    for hab in sorted(by_hab):
        files = sorted(by_hab[hab], key=lambda p: frame_id(p.stem))
        n = len(files)
        for k in range(min(per_habitat, n)):
            out["train" if k % 2 == 0 else "val"].append(files[int((k + 0.5) * n / per_habitat)])
    return out


def write(src: pathlib.Path, dst: pathlib.Path = SAMPLE_DIR, per_habitat: int = 8) -> dict:
    """Copies the selected frames and labels into ``dst/{train,val}/{images,labels}``."""
    chosen = select(src, per_habitat)
    for split, files in chosen.items():
        for sub in ("images", "labels"):
            d = dst / split / sub
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        for p in files:
            shutil.copy2(p, dst / split / "images" / p.name)
            shutil.copy2(src / "labels" / f"{p.stem}.txt", dst / split / "labels" / f"{p.stem}.txt")
    return {k: len(v) for k, v in chosen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=pathlib.Path, help="folder with images/ and labels/")
    ap.add_argument("--dst", type=pathlib.Path, default=SAMPLE_DIR)
    ap.add_argument("--per_habitat", type=int, default=8)
    args = ap.parse_args()
    print(write(args.src, args.dst, args.per_habitat))


if __name__ == "__main__":
    main()
