"""Which frozen EfficientNet-Lite0 features tell fish from water? A linear probe per stage.

    pip install scikit-learn   # the probe's logistic regression and AUC; not a package dependency
    python -m benchmarks.feature_probe /data/deepfish_frames [--short_side=202] [--train=300 --val=150]

On a YOLO box folder (the fixed hash split of ``alcfcn_jax/data/boxes.py``), the undilated
ImageNet Lite0 trunk runs on ``--train`` training and ``--val`` validation frames (random, seed 0,
letterbox bars cropped, short side ``--short_side``). Every stage output (s1..s7, the 1280-channel
head) is resized to the stride-8 grid. Cells are labelled fish at the click (box centre) and
background when their centre lies outside every box (by more than 4 pixels); 10% of the
background cells are kept. A class-balanced logistic regression (C=0.05) per stage and for some
stage sets, standardised on the training cells, is scored on the validation cells: ROC AUC and
average precision (the base rate is the share of fish cells). docs/results.md uses it to choose
the taps of ``configs/frames.py``.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np
from flax import nnx

from alcfcn_jax.data import boxes as bx
from alcfcn_jax.models.efficientnet_lite import EfficientNetLite0Trunk, relu6
from alcfcn_jax.models.vgg16_fcn8 import convert_input
from alcfcn_jax.weights.efficientnet import load_efficientnet_lite0, package_weights_path

NAMES = ("s1", "s2", "s3", "s4", "s5", "s6", "s7", "head")
CHANNELS = (16, 24, 40, 80, 112, 192, 320, 1280)
SETS = {"s3+s5+head": (2, 4, 7), "s2..s7": (1, 2, 3, 4, 5, 6), "all": tuple(range(8))}


def _features(trunk: EfficientNetLite0Trunk):
    graph, state = nnx.split(trunk)

    @jax.jit
    def run(state, x):
        t = nnx.merge(graph, state)
        x = convert_input(x, t.input_format)
        y = relu6(t.bn0(t.conv_stem(x)))
        outs = []
        for i, block in enumerate(t.blocks):
            y = block(y)
            if i in t.stage_ends:
                outs.append(y)
        outs.append(relu6(t.bn1(t.conv_head(y))))
        h8, w8 = -(-x.shape[1] // 8), -(-x.shape[2] // 8)
        return [jax.image.resize(o, (o.shape[0], h8, w8, o.shape[-1]), "bilinear") for o in outs]

    return lambda x: run(state, x)


def _cells(root, paths, features, short_side, rng):
    xs, ys, seconds = [], [], 0.0
    for p in paths:
        labels = bx.read_yolo(root / "labels" / f"{p.stem}.txt")
        ex = bx.load_example(p, labels, short_side=short_side, letterbox="crop")
        h, w = ex["image"].shape[:2]
        hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
        img = np.pad(ex["image"][None], ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        t0 = time.perf_counter()
        feats = [np.asarray(f[0]) for f in features(img)]
        seconds += time.perf_counter() - t0
        h8, w8 = -(-h // 8), -(-w // 8)
        feats = [f[:h8, :w8] for f in feats]
        yy, xx = np.mgrid[0:h8, 0:w8]
        cy, cx = yy * 8 + 4, xx * 8 + 4
        inside = np.zeros((h8, w8), bool)
        for x0, y0, x1, y1 in ex["boxes"]:
            inside |= (cx >= x0 - 4) & (cx <= x1 + 4) & (cy >= y0 - 4) & (cy <= y1 + 4)
        lab = np.full((h8, w8), -1, np.int8)
        lab[~inside] = 0
        py, px = np.nonzero(ex["points"] == 1)
        lab[py // 8, px // 8] = 1
        keep = (lab == 1) | ((lab == 0) & (rng.random((h8, w8)) < 0.1))
        xs.append(np.concatenate(feats, -1)[keep])
        ys.append(lab[keep])
    return np.concatenate(xs), np.concatenate(ys), seconds / max(len(paths), 1)


def main(argv=None) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=pathlib.Path)
    ap.add_argument("--short_side", type=int, default=202)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=150)
    args = ap.parse_args(argv)
    files = bx.list_images(args.data_dir)
    train = [p for p in files if not bx.in_val(p.stem, 20)]
    val = [p for p in files if bx.in_val(p.stem, 20)]
    pick = np.random.RandomState(0)
    train = [train[i] for i in pick.permutation(len(train))[: args.train]]
    val = [val[i] for i in pick.permutation(len(val))[: args.val]]
    trunk = EfficientNetLite0Trunk(rngs=nnx.Rngs(0), dilated=False)
    load_efficientnet_lite0(trunk, package_weights_path())
    features = _features(trunk)
    rng = np.random.default_rng(0)
    t0 = time.time()
    x_tr, y_tr, s_img = _cells(args.data_dir, train, features, args.short_side, rng)
    x_va, y_va, _ = _cells(args.data_dir, val, features, args.short_side, rng)
    print(
        f"short side {args.short_side}: trunk {s_img:.3f} s/image, {int(y_tr.sum())} fish cells "
        f"of {len(y_tr)} training cells, {time.time() - t0:.0f} s",
        flush=True,
    )
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-3
    x_tr, x_va = (x_tr - mu) / sd, (x_va - mu) / sd
    offsets = np.cumsum((0,) + CHANNELS)
    rows = []
    for name, idx in [(n, (i,)) for i, n in enumerate(NAMES)] + list(SETS.items()):
        cols = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
        clf = LogisticRegression(C=0.05, max_iter=300, class_weight="balanced")
        prob = clf.fit(x_tr[:, cols], y_tr).predict_proba(x_va[:, cols])[:, 1]
        row = {
            "features": name,
            "auc": float(roc_auc_score(y_va, prob)),
            "ap": float(average_precision_score(y_va, prob)),
            "base_rate": float(y_va.mean()),
        }
        rows.append(row)
        print(f"{name:12s} AUC {row['auc']:.3f}  AP {row['ap']:.3f}  base {row['base_rate']:.3f}")
    return rows


if __name__ == "__main__":
    main()
