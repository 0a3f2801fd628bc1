"""Rebuilds the small real sample shipped in ``alcfcn_jax/data/sample/``.

Fixed rule: for each of the 20 habitats, sort that habitat's frames by name and take 8 of them
evenly spaced (the k-th at index ``int((k + 0.5) * n / 8)``); the odd k go to ``val/`` (4 per
habitat, 80 in all). ``train/`` gets ``train_per_habitat`` (20) frames per habitat, evenly spaced
the same way over the habitat's frames that are not in ``val/`` (400 in all). Files are copied
unchanged (360x360 letterboxed JPEG and YOLO labels in that frame); the box reader crops the bars
at read time.

Usage: ``python -m alcfcn_jax.data.make_sample /data/deepfish_frames [--train_per_habitat 20]``
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import shutil

from alcfcn_jax.data.boxes import frame_id, list_images
from alcfcn_jax.data.preprocess import habitat_of

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample"


def _spaced(files: list, k: int) -> list:
    """``k`` of ``files`` evenly spaced (all of them when there are no more than ``k``)."""
    n = len(files)
    return [files[int((i + 0.5) * n / k)] for i in range(min(k, n))]


def select(src: pathlib.Path, train_per_habitat: int = 20) -> dict[str, list[pathlib.Path]]:
    """The sample's images by split, chosen by the fixed rule (module doc)."""
    by_hab: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
    for p in list_images(src):
        by_hab[habitat_of(frame_id(p.stem))].append(p)
    out: dict[str, list[pathlib.Path]] = {"train": [], "val": []}
    for hab in sorted(by_hab):
        files = sorted(by_hab[hab], key=lambda p: frame_id(p.stem))
        picks = _spaced(files, 8)
        val = picks[1::2]
        out["val"] += val
        rest = [p for p in files if p not in set(val)]
        out["train"] += _spaced(rest, train_per_habitat)
    return out


def write(src: pathlib.Path, dst: pathlib.Path = SAMPLE_DIR, train_per_habitat: int = 20) -> dict:
    """Copies the selected frames and labels into ``dst/{train,val}/{images,labels}``."""
    chosen = select(src, train_per_habitat)
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=pathlib.Path, help="folder with images/ and labels/")
    ap.add_argument("--dst", type=pathlib.Path, default=SAMPLE_DIR)
    ap.add_argument("--train_per_habitat", type=int, default=20)
    args = ap.parse_args(argv)
    counts = write(args.src, args.dst, args.train_per_habitat)
    print(counts)
    return counts


if __name__ == "__main__":
    main()
