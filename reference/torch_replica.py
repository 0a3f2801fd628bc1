"""PyTorch replica of the reference A-LCFCN network and training step (parity tests, timing).

The tests compare our models against it (tests/test_resnet38.py, test_vgg16_fcn8.py,
test_torch_reference.py) and ``benchmarks/torch_reference.py`` times it beside our JAX step. The
replica is written from the reference spec (docs/reference_spec.md, sections 2.1-2.7, 2.9, 3 and the optimizer of sections 0 and 7);
nothing of the original code is available here:

* ``ResNet38Aff``: ResNet-38d trunk (2.2) + the affinity head f8_3/f8_4/f8_5/f9 (2.4) + the
  activation branch ``fc8(dropout7(conv6))`` (2.3), every trunk width scaled by ``width / 64``
  (64 = the reference; small widths give structurally identical networks for tests). Its
  ``train()`` is the reference's: every BatchNorm in eval mode with frozen scale/shift, and
  conv1a, b2, b2_1, b2_2 frozen; Dropout2d stays active. ``apply_affinity`` is spec 2.5-2.7:
  pad to a multiple of 8, second trunk run on the padded image, radius-5 neighbour pairs (with
  the small-map radius fallback), dense N x N affinity built through ``sparse_coo_tensor(...)
  .to_dense()``, ``A**beta``, column normalisation, ``logt`` squarings, 8 x 8 average pool of the
  padded logits, ``cam @ T`` and two bilinear (align_corners=False) resizes.
* ``FCN8VGG16Torch``: the FCN8-VGG16 of spec 2.9 (conv1_1 pad 100, ceil-mode pools, fc6 7x7,
  zero-initialised scorers, bilinear-initialised transposed convs, crops 5/9/31).
* ``ALCFCNReference``: the reference's top-level ``FCN8VGG16.forward`` in shared mode: the VGG
  network runs (with autograd, as in the reference) and its output is discarded; ``cam`` =
  ``output_logits`` of the trunk on the unpadded image; logits = ``apply_affinity(x, cam)``.
* ``reference_train_step``: ``zero_grad``; forward; ``probs = softmax(logits, 1)[:, 1]``; LCFCN
  targets on the host from ``reference/lcfcn_numpy.py`` (the numpy port of the reference's
  ``get_tgt_list``) turned into ``scale * F.binary_cross_entropy`` means, so only the BCE terms
  carry gradient; ``backward`` and an Adam(lr 1e-6, betas (0.99, 0.999)) step if the loss != 0.

Random initialisation (PyTorch defaults; spec inits for f8_*/f9 and the FCN8 head), batch 1. The
inputs are those of ``benchmarks/train_step.py``'s ``_batch`` for one image (same generator,
same draw order): a random normal image and ``n_points`` random clicked pixels.

torch is imported lazily: importing this module needs only numpy; the classes are built on first
access (``from reference.torch_replica import ResNet38Aff`` imports torch then).
"""

from __future__ import annotations

import functools
import pathlib
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from reference import lcfcn_numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]

STRIDE = 8  # output stride of the trunk
RADIUS = 5  # neighbour radius of the affinity graph (spec 2.5)
BETA = 8  # Hadamard power of the affinity matrix (spec 2.7, A-LCFCN default)
LOGT = 4  # number of squarings of the transition matrix (t = 16)
LEARNING_RATE = 1e-6  # A-LCFCN / LCFCN (spec 0, 7)
ADAM_BETAS = (0.99, 0.999)
# The reference's ``not_training`` list (spec 2.2): frozen by ``train()``.
NOT_TRAINING = ("conv1a", "b2", "b2_1", "b2_2")
VGG16_BLOCKS = (2, 2, 3, 3, 3)  # convs per VGG-16 block

# Names resolved lazily by ``__getattr__`` (each needs torch).
_LAZY = (
    "ResBlock",
    "ResBlockBot",
    "ResNet38Aff",
    "FCN8VGG16Torch",
    "ALCFCNReference",
    "dense_affinity",
    "random_walk",
    "lcfcn_loss",
    "reference_train_step",
    "make_optimizer",
)

__all__ = [
    "get_indices_of_pairs",
    "make_inputs",
    "reference_radius",
    "search_offsets",
    "torch_namespace",
    *_LAZY,
]


# ----------------------------------------------------------------------------- numpy helpers


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """The reference's "half-disk" neighbour offsets (dy, dx) for ``radius``, in its order.

    ``(0, 1..r-1)`` then, row by row for ``dy = 1..r-1``, every ``dx`` in ``-(r-1)..r-1`` with
    ``dy^2 + dx^2 < r^2`` (34 offsets for r = 5).
    """
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def get_indices_of_pairs(radius: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The reference's neighbour pairs on an h x w map (spec 2.5).

    Args:
      radius: neighbour radius (no fallback applied here).
      size: (h, w) of the stride-8 map.

    Returns:
      ``(ind_from, ind_to)`` int64 flat row-major indices: ``ind_from`` are the pixels of rows
      ``[0, h - r + 1)`` and columns ``[r - 1, w - r + 1)``; ``ind_to`` holds, offset-major, the
      pixel each of them reaches by each offset of ``search_offsets(radius)``, so pair ``k`` is
      ``(tile(ind_from, n_offsets)[k], ind_to[k])``. With ``radius <= 1`` there are no offsets
      and both arrays are empty (the reference would fail to reshape its empty gather there).
    """
    h, w = int(size[0]), int(size[1])
    offsets = search_offsets(radius)
    rf = radius - 1
    if not offsets or h - rf <= 0 or w - 2 * rf <= 0:
        empty = np.zeros((0,), np.int64)
        return empty, empty
    full = np.arange(h * w, dtype=np.int64).reshape(h, w)
    crop_h, crop_w = h - rf, w - 2 * rf
    ind_from = full[:crop_h, rf : rf + crop_w].reshape(-1)
    ind_to = np.concatenate(
        [full[dy : dy + crop_h, rf + dx : rf + dx + crop_w].reshape(-1) for dy, dx in offsets]
    )
    return ind_from, ind_to


def reference_radius(h: int, w: int) -> int:
    """Radius the reference uses on an h x w stride-8 map: 5, or (min side - 1) // 2 below 11."""
    short = min(h, w)
    return (short - 1) // 2 if short < 11 else RADIUS


def make_inputs(
    height: int, width: int, *, n_points: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random image and clicked points, drawn as ``benchmarks/train_step._batch`` draws image 0.

    Args:
      height: image height.
      width: image width.
      n_points: clicked pixels (``_batch`` gives its first image 1 point; duplicates merge).
      seed: numpy generator seed.

    Returns:
      ``(image (1, 3, H, W) float32 NCHW, points (H, W) int64 in {0, 1})``.
    """
    if height < 1 or width < 1 or n_points < 0:
        raise ValueError(
            f"make_inputs: need height, width >= 1 and n_points >= 0, got {height}, {width}, "
            f"{n_points}"
        )
    rng = np.random.default_rng(seed)
    points = np.zeros((height, width), np.int64)
    for _ in range(n_points):
        points[rng.integers(height), rng.integers(width)] = 1
    image = rng.normal(size=(1, height, width, 3)).astype(np.float32)
    return np.ascontiguousarray(image.transpose(0, 3, 1, 2)), points


# ----------------------------------------------------------------------------- torch replica


@functools.cache
def torch_namespace() -> SimpleNamespace:
    """Imports torch and builds the replica classes and functions (once).

    Returns:
      A namespace with ``torch`` and every name of ``_LAZY``.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ResBlock(nn.Module):
        """Pre-activation ResNet-38d block (spec 2.2); ``forward`` returns ``(out, relu(bn(x)))``."""

        def __init__(self, in_ch, mid_ch, out_ch, stride=1, first_dilation=None, dilation=1):
            super().__init__()
            first_dilation = dilation if first_dilation is None else first_dilation
            self.same_shape = in_ch == out_ch and stride == 1
            self.bn_branch2a = nn.BatchNorm2d(in_ch)
            self.conv_branch2a = nn.Conv2d(
                in_ch, mid_ch, 3, stride, first_dilation, first_dilation, bias=False
            )
            self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
            self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, 1, dilation, dilation, bias=False)
            if not self.same_shape:
                self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

        def forward(self, x):
            a = F.relu(self.bn_branch2a(x))
            shortcut = x if self.same_shape else self.conv_branch1(a)
            y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
            return shortcut + y, a

    class ResBlockBot(nn.Module):
        """Bottleneck block of b6/b7 with Dropout2d after both inner BN-ReLUs (spec 2.2)."""

        def __init__(self, in_ch, out_ch, stride=1, dilation=1, dropout=0.0):
            super().__init__()
            self.bn_branch2a = nn.BatchNorm2d(in_ch)
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
            self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
            self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
            self.dropout_2b1 = nn.Dropout2d(dropout)
            self.conv_branch2b1 = nn.Conv2d(
                out_ch // 4, out_ch // 2, 3, 1, dilation, dilation, bias=False
            )
            self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
            self.dropout_2b2 = nn.Dropout2d(dropout)
            self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)

        def forward(self, x):
            a = F.relu(self.bn_branch2a(x))
            shortcut = self.conv_branch1(a)
            y = self.dropout_2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
            y = self.dropout_2b2(F.relu(self.bn_branch2b2(self.conv_branch2b1(y))))
            return shortcut + self.conv_branch2b2(y), a

    def dense_affinity(feats):
        """Dense symmetric N x N affinity of (1, C, h, w) features (spec 2.5-2.6), diagonal 1.

        ``a_ij = exp(-mean_c |f_ic - f_jc|)`` on the reference's radius-5 pairs (with its
        small-map fallback), scattered through ``sparse_coo_tensor(...).to_dense()`` as the
        reference's legacy sparse constructor does; differentiable w.r.t. ``feats``.
        """
        if feats.dim() != 4 or feats.shape[0] != 1:
            raise ValueError(
                f"dense_affinity: feats must be (1, C, h, w), got {tuple(feats.shape)}"
            )
        _, c, h, w = feats.shape
        n = h * w
        ind_from, ind_to = get_indices_of_pairs(reference_radius(h, w), (h, w))
        x = feats.reshape(1, c, n)
        n_from = ind_from.size
        ids = torch.arange(n, dtype=torch.int64, device=feats.device)
        if n_from:
            ff = x[:, :, torch.from_numpy(ind_from)].unsqueeze(2)  # (1, C, 1, Nf)
            ft = x[:, :, torch.from_numpy(ind_to)].reshape(1, c, -1, n_from)  # (1, C, K, Nf)
            aff = torch.exp(-torch.mean(torch.abs(ft - ff), dim=1)).reshape(-1)
            k = ind_to.size // n_from
            from_rep = torch.from_numpy(np.tile(ind_from, k))
            to = torch.from_numpy(ind_to)
        else:
            aff = feats.new_zeros((0,))
            from_rep = to = torch.zeros((0,), dtype=torch.int64)
        rows = torch.cat([from_rep, ids, to])
        cols = torch.cat([to, ids, from_rep])
        values = torch.cat([aff, torch.ones(n, dtype=feats.dtype, device=feats.device), aff])
        indices = torch.stack([rows, cols])
        return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).to_dense()

    def random_walk(feats, logits, beta=BETA, logt=LOGT):
        """Reference random walk of ``logits`` (1, K, H, W) given padded-image features.

        Args:
          feats: (1, C, ceil(H/8), ceil(W/8)) affinity features of the zero-padded image.
          logits: (1, K, H, W) activation logits.
          beta: Hadamard power of A.
          logt: number of squarings of the transition matrix.

        Returns:
          (1, K, H, W) refined logits.
        """
        _, k, h, w = logits.shape
        hp, wp = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
        if tuple(feats.shape[2:]) != (hp // STRIDE, wp // STRIDE) or feats.shape[0] != 1:
            raise ValueError(
                f"random_walk: feats must be (1, C, {hp // STRIDE}, {wp // STRIDE}) for logits "
                f"{tuple(logits.shape)}, got {tuple(feats.shape)}"
            )
        a = dense_affinity(feats) ** beta
        t = a / torch.sum(a, dim=0, keepdim=True)  # column-normalised
        for _ in range(logt):
            t = torch.matmul(t, t)
        cam = F.avg_pool2d(F.pad(logits, (0, wp - w, 0, hp - h)), STRIDE, STRIDE)
        rw = torch.matmul(cam.reshape(k, -1), t).reshape(1, k, hp // STRIDE, wp // STRIDE)
        rw = F.interpolate(rw, (hp, wp), mode="bilinear", align_corners=False)
        return F.interpolate(rw, (h, w), mode="bilinear", align_corners=False)

    class ResNet38Aff(nn.Module):
        """SEAM/PSA ``resnet38_aff.Net`` + A-LCFCN's fc8/dropout7, widths scaled by width/64.

        ``forward(x)`` returns ``(conv4, conv5, conv6, cam8, aff_feats)`` (all taps, no dropout
        skipping) for parity tests; the training step uses ``output_logits`` and
        ``apply_affinity`` exactly as the reference does.
        """

        def __init__(self, width=64, n_classes=2, beta=BETA, logt=LOGT):
            super().__init__()
            if not isinstance(width, int) or width < 1:
                raise ValueError(f"ResNet38Aff: width must be a positive int, got {width!r}")
            self.width, self.beta, self.logt = width, beta, logt
            c = lambda n: n * width // 64
            self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
            self.b2 = ResBlock(c(64), c(128), c(128), stride=2)
            self.b2_1 = ResBlock(c(128), c(128), c(128))
            self.b2_2 = ResBlock(c(128), c(128), c(128))
            self.b3 = ResBlock(c(128), c(256), c(256), stride=2)
            self.b3_1 = ResBlock(c(256), c(256), c(256))
            self.b3_2 = ResBlock(c(256), c(256), c(256))
            self.b4 = ResBlock(c(256), c(512), c(512), stride=2)
            for i in range(1, 6):
                setattr(self, f"b4_{i}", ResBlock(c(512), c(512), c(512)))
            self.b5 = ResBlock(c(512), c(512), c(1024), first_dilation=1, dilation=2)
            self.b5_1 = ResBlock(c(1024), c(512), c(1024), dilation=2)
            self.b5_2 = ResBlock(c(1024), c(512), c(1024), dilation=2)
            self.b6 = ResBlockBot(c(1024), c(2048), dilation=4, dropout=0.3)
            self.b7 = ResBlockBot(c(2048), c(4096), dilation=4, dropout=0.5)
            self.bn7 = nn.BatchNorm2d(c(4096))
            self.f8_3 = nn.Conv2d(c(512), 64, 1, bias=False)
            self.f8_4 = nn.Conv2d(c(1024), 128, 1, bias=False)
            self.f8_5 = nn.Conv2d(c(4096), 256, 1, bias=False)
            self.f9 = nn.Conv2d(448, 448, 1, bias=False)
            self.dropout7 = nn.Dropout2d(0.5)
            self.fc8 = nn.Conv2d(c(4096), n_classes, 1, bias=False)
            # Spec 2.4: the affinity head's init when not loaded from SEAM's checkpoint.
            for conv in (self.f8_3, self.f8_4, self.f8_5):
                nn.init.kaiming_normal_(conv.weight)
            nn.init.xavier_uniform_(self.f9.weight, gain=4)

        def train(self, mode=True):
            """Reference ``train()``: BN always eval + frozen, conv1a/b2* frozen (returns self)."""
            super().train(mode)
            for name in NOT_TRAINING:
                for p in getattr(self, name).parameters():
                    p.requires_grad_(False)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
            return self

        def trunk(self, x):
            """ResNet-38d taps ``(conv4, conv5, conv6)`` of an NCHW image batch."""
            x = self.conv1a(x)
            for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"):
                x, _ = getattr(self, name)(x)
            for i in range(1, 6):
                x, _ = getattr(self, f"b4_{i}")(x)
            x, conv4 = self.b5(x)
            x, _ = self.b5_1(x)
            x, _ = self.b5_2(x)
            x, conv5 = self.b6(x)
            x, _ = self.b7(x)
            return conv4, conv5, F.relu(self.bn7(x))

        def affinity_features(self, taps):
            """``elu(f9(cat[elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))]))``."""
            conv4, conv5, conv6 = taps
            f = torch.cat(
                [F.elu(self.f8_3(conv4)), F.elu(self.f8_4(conv5)), F.elu(self.f8_5(conv6))], 1
            )
            return F.elu(self.f9(f))

        def forward(self, x):
            conv4, conv5, conv6 = self.trunk(x)
            cam8 = self.fc8(self.dropout7(conv6))
            return conv4, conv5, conv6, cam8, self.affinity_features((conv4, conv5, conv6))

        def output_logits(self, x):
            """Activation branch (spec 2.3): fc8(dropout7(conv6)) resized to (H, W), corners."""
            cam8 = self.fc8(self.dropout7(self.trunk(x)[2]))
            return F.interpolate(cam8, x.shape[2:], mode="bilinear", align_corners=True)

        def apply_affinity(self, x, logits):
            """Spec 2.7: second trunk run on the zero-padded image, then the random walk."""
            h, w = x.shape[2:]
            hp, wp = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
            feats = self.affinity_features(self.trunk(F.pad(x, (0, wp - w, 0, hp - h))))
            return random_walk(feats, logits, self.beta, self.logt)

    def _bilinear_kernel(channels, size):
        """(in, out, k, k) per-channel bilinear upsampling kernel (classic FCN initialiser)."""
        factor = (size + 1) // 2
        center = factor - 1 if size % 2 == 1 else factor - 0.5
        og = np.arange(size, dtype=np.float64)
        taps = 1 - np.abs(og - center) / factor
        kernel = np.zeros((channels, channels, size, size), np.float32)
        kernel[range(channels), range(channels)] = np.outer(taps, taps)
        return torch.from_numpy(kernel)

    class FCN8VGG16Torch(nn.Module):
        """FCN8-VGG16 of spec 2.9 (random VGG weights; zero scorers; bilinear upsamplers)."""

        def __init__(self, n_classes=2, channels=(64, 128, 256, 512, 512), fc_width=4096):
            super().__init__()
            if len(channels) != len(VGG16_BLOCKS):
                raise ValueError(f"FCN8VGG16Torch: channels must have 5 widths, got {channels}")
            in_ch = 3
            self.conv_names = []
            for b, (n_convs, out_ch) in enumerate(zip(VGG16_BLOCKS, channels)):
                for i in range(n_convs):
                    name = f"conv{b + 1}_{i + 1}"
                    pad = 100 if name == "conv1_1" else 1
                    setattr(self, name, nn.Conv2d(in_ch, out_ch, 3, padding=pad))
                    self.conv_names.append(name)
                    in_ch = out_ch
            self.fc6 = nn.Conv2d(channels[4], fc_width, 7)
            self.dropout_f6 = nn.Dropout(0.5)
            self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
            self.dropout_f7 = nn.Dropout(0.5)
            self.scoring_layer = nn.Conv2d(fc_width, n_classes, 1)
            self.score_pool4 = nn.Conv2d(channels[3], n_classes, 1)
            self.score_pool3 = nn.Conv2d(channels[2], n_classes, 1)
            for conv in (self.scoring_layer, self.score_pool4, self.score_pool3):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            self.upscore2 = nn.ConvTranspose2d(n_classes, n_classes, 4, 2, bias=False)
            self.upscore_pool4 = nn.ConvTranspose2d(n_classes, n_classes, 4, 2, bias=False)
            self.upscore8 = nn.ConvTranspose2d(n_classes, n_classes, 16, 8, bias=False)
            for up in (self.upscore2, self.upscore_pool4, self.upscore8):
                with torch.no_grad():
                    up.weight.copy_(_bilinear_kernel(n_classes, up.kernel_size[0]))

        def forward(self, x):
            h, w = x.shape[2:]
            pools = []
            names = iter(self.conv_names)
            for n_convs in VGG16_BLOCKS:
                for _ in range(n_convs):
                    x = F.relu(getattr(self, next(names))(x))
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                pools.append(x)
            pool3, pool4, pool5 = pools[2], pools[3], pools[4]
            fc7 = self.dropout_f7(F.relu(self.fc7(self.dropout_f6(F.relu(self.fc6(pool5))))))
            up2 = self.upscore2(self.scoring_layer(fc7))
            s4 = self.score_pool4(pool4)[:, :, 5 : 5 + up2.shape[2], 5 : 5 + up2.shape[3]]
            up4 = self.upscore_pool4(s4 + up2)
            s3 = self.score_pool3(pool3)[:, :, 9 : 9 + up4.shape[2], 9 : 9 + up4.shape[3]]
            out = self.upscore8(s3 + up4)
            return out[:, :, 31 : 31 + h, 31 : 31 + w]

    class ALCFCNReference(nn.Module):
        """Reference top-level forward in shared mode (spec 2.1).

        Args:
          width: ResNet-38d width (64 = reference).
          n_classes: output classes.
          with_vgg: run the (dead) FCN8-VGG16 forward as the reference does.
          vgg_kwargs: ``FCN8VGG16Torch`` overrides (small widths for tests).
        """

        def __init__(self, width=64, n_classes=2, with_vgg=True, vgg_kwargs=None):
            super().__init__()
            self.vgg = FCN8VGG16Torch(n_classes, **(vgg_kwargs or {})) if with_vgg else None
            self.model_aff = ResNet38Aff(width, n_classes)
            self.last_timings: dict[str, float] = {}

        def forward(self, x):
            t0 = time.perf_counter()
            if self.vgg is not None:
                self.vgg(x)  # output overwritten in shared mode; its graph is simply dropped
            t1 = time.perf_counter()
            cam = self.model_aff.output_logits(x)
            t2 = time.perf_counter()
            logits = self.model_aff.apply_affinity(x, cam)
            t3 = time.perf_counter()
            self.last_timings = {"vgg_s": t1 - t0, "cam_s": t2 - t1, "affinity_s": t3 - t2}
            return logits

    def lcfcn_loss(probs, points):
        """LCFCN loss (spec 3): host targets from the numpy reference port, torch BCE terms.

        Args:
          probs: (H, W) foreground probabilities (a tensor with grad).
          points: (H, W) int numpy array in {0, 1}.

        Returns:
          Scalar tensor ``sum_k scale_k * mean BCE(probs[S_k], y_k)`` (0.0 if no targets).
        """
        if tuple(probs.shape) != tuple(points.shape):
            raise ValueError(
                f"lcfcn_loss: probs {tuple(probs.shape)} and points {points.shape} must match"
            )
        targets = lcfcn_numpy.get_tgt_list(
            np.asarray(points, np.int64), probs.detach().cpu().numpy()
        )
        flat = probs.reshape(-1)
        loss = probs.new_zeros(())
        for t in targets:
            p = flat[torch.from_numpy(np.asarray(t["ind_list"], np.int64))]
            y = torch.full_like(p, float(t["label"]))
            loss = loss + float(t["scale"]) * F.binary_cross_entropy(p, y)
        return loss

    def make_optimizer(model, lr=LEARNING_RATE):
        """Reference optimizer: Adam over all parameters (frozen/unused ones get no grads)."""
        return torch.optim.Adam(model.parameters(), lr=lr, betas=ADAM_BETAS)

    def reference_train_step(model, optimizer, image, points):
        """One reference training step (spec 7): forward, LCFCN loss, backward, Adam.

        Args:
          model: ``ALCFCNReference`` in ``train()`` mode.
          optimizer: from ``make_optimizer``.
          image: (1, 3, H, W) float32 tensor.
          points: (H, W) numpy int array in {0, 1}.

        Returns:
          ``{"loss", "forward_s", "vgg_s", "cam_s", "affinity_s", "targets_s", "backward_s",
          "optimizer_s", "forward_backward_s", "step_s"}`` (seconds; ``forward_backward_s`` is
          zero_grad + forward + LCFCN targets + backward, i.e. the step without the Adam update).
        """
        t0 = time.perf_counter()
        optimizer.zero_grad()
        logits = model(image)
        probs = F.softmax(logits, 1)[:, 1][0]
        t1 = time.perf_counter()
        loss = lcfcn_loss(probs, points)
        loss_value = float(loss.detach())
        t2 = time.perf_counter()
        if loss_value != 0.0:  # the reference skips backward and step on a zero loss
            loss.backward()
        t3 = time.perf_counter()
        if loss_value != 0.0:
            optimizer.step()
        t4 = time.perf_counter()
        timings = getattr(model, "last_timings", {})
        return {
            "loss": loss_value,
            "forward_s": t1 - t0,
            **timings,
            "targets_s": t2 - t1,
            "backward_s": t3 - t2,
            "optimizer_s": t4 - t3,
            "forward_backward_s": t3 - t0,
            "step_s": t4 - t0,
        }

    return SimpleNamespace(
        torch=torch,
        ResBlock=ResBlock,
        ResBlockBot=ResBlockBot,
        ResNet38Aff=ResNet38Aff,
        FCN8VGG16Torch=FCN8VGG16Torch,
        ALCFCNReference=ALCFCNReference,
        dense_affinity=dense_affinity,
        random_walk=random_walk,
        lcfcn_loss=lcfcn_loss,
        reference_train_step=reference_train_step,
        make_optimizer=make_optimizer,
    )


def __getattr__(name: str) -> Any:
    # PEP 562: the torch-backed names are built on first access.
    if name in _LAZY:
        return getattr(torch_namespace(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
