"""Torch-free checkpoint reading (restricted unpickler) and the checked name/shape mapping."""

import json
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from conftest import example_state_dict
from flax import nnx

from alcfcn_jax.models.layers import FrozenBatchNorm, conv2d
from alcfcn_jax.weights import torch_pickle
from alcfcn_jax.weights.common import (
    CONV_OIHW_TO_HWIO,
    IDENTITY,
    WeightImportError,
    apply_mapping,
    export_arrays,
    load_arrays,
    save_npz,
)


class _Evil:
    """Pickles to a call of os.system: loading it must be refused, never executed."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _write_zip_checkpoint(path, obj) -> None:
    """Writes a zip-format checkpoint whose data.pkl is ``obj`` pickled by the stdlib."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("legacy", [False, True])
def test_reads_tensors_exactly(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    sd = example_state_dict(torch)
    path = tmp_path / "w.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    out = torch_pickle.load_state_dict(path)
    assert list(out) == list(sd)
    for k, t in sd.items():
        ref = t.detach()
        if ref.dtype == torch.bfloat16:
            assert str(out[k].dtype) == "bfloat16"
            np.testing.assert_array_equal(out[k].astype(np.float32), ref.float().numpy())
        else:
            assert out[k].dtype == ref.numpy().dtype, k
            assert out[k].shape == tuple(ref.shape), k
            np.testing.assert_array_equal(out[k], ref.numpy())


TORCH_FREE = pathlib.Path(__file__).parent / "fixtures" / "torch_free"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_reads_committed_torch_save_files_exactly(fmt):
    """Files written by torch.save (tests/fixtures/torch_free/make_fixtures.py), read without
    torch: every dtype, a transposed view, a storage offset, a 0-d and an empty tensor."""
    out = torch_pickle.load_state_dict(TORCH_FREE / f"state_dict_{fmt}.pth")
    dtypes = json.loads((TORCH_FREE / "state_dict_dtypes.json").read_text())
    with np.load(TORCH_FREE / "state_dict_expected.npz") as expected:
        assert list(out) == list(dtypes) == sorted(expected.files, key=list(dtypes).index)
        for k, dtype in dtypes.items():
            want = expected[k]
            if dtype == "bfloat16":
                assert str(out[k].dtype) == "bfloat16"
                np.testing.assert_array_equal(out[k].astype(np.float32), want)
            else:
                assert out[k].dtype == want.dtype and out[k].shape == want.shape, k
                np.testing.assert_array_equal(out[k], want)
    assert out["transposed"].shape == (7, 5) and out["scalar"].shape == ()
    assert out["half"].dtype == np.float16 and out["flag"].dtype == np.bool_


def test_nested_dict_and_module_prefix(tmp_path):
    torch = pytest.importorskip("torch")
    inner = {"module.a.weight": torch.ones(2, 2), "module.b": torch.zeros(3)}
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, "model": {"state_dict": inner}}, path)
    out = torch_pickle.load_state_dict(path)
    assert sorted(out) == ["a.weight", "b"]
    # A partial prefix is left alone.
    torch.save({"module.a": torch.ones(1), "b": torch.ones(1)}, path)
    assert sorted(torch_pickle.load_state_dict(path)) == ["b", "module.a"]


def test_no_state_dict_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3, "weights": [torch.ones(1)]}, path)
    with pytest.raises(torch_pickle.TorchCheckpointError, match="no state dict found.*epoch"):
        torch_pickle.load_state_dict(path)


def test_refuses_code_execution_reduce(tmp_path):
    path = tmp_path / "evil.pth"
    _write_zip_checkpoint(path, {"w": _Evil()})
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="posix.system|os.system"):
        torch_pickle.load_state_dict(path)


def test_refuses_class_instance(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module, not a state dict
    with pytest.raises(torch_pickle.UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        torch_pickle.load_state_dict(path)
    # Same for a legacy-format file carrying a plain class instance.
    legacy_path = tmp_path / "legacy.pth"
    torch.save({"a": torch.ones(1), "obj": _Evil()}, legacy_path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    with pytest.raises(torch_pickle.UnsafeCheckpointError):
        torch_pickle.load_state_dict(legacy_path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(torch_pickle.TorchCheckpointError):
        torch_pickle.load_state_dict(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        torch_pickle.load_state_dict(tmp_path / "missing.pth")


class _Small(nnx.Module):
    def __init__(self, rngs):
        self.conv = conv2d(3, 4, 3, rngs=rngs)
        self.bn = FrozenBatchNorm(4)


def _small_mapping():
    m = {"conv.weight": (("conv", "kernel"), CONV_OIHW_TO_HWIO)}
    for t, j in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")):  # fmt: skip
        m[f"bn.{t}"] = (f"bn.{j}", IDENTITY)
    return m


def test_apply_mapping_roundtrip_and_npz(tmp_path):
    model = _Small(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "bn.weight": rng.normal(size=4).astype(np.float32),
        "bn.bias": rng.normal(size=4).astype(np.float32),
        "bn.running_mean": rng.normal(size=4).astype(np.float32),
        "bn.running_var": rng.uniform(0.5, 2, size=4).astype(np.float32),
    }
    apply_mapping(model, arrays, _small_mapping())
    np.testing.assert_array_equal(
        np.asarray(model.conv.kernel[...]), arrays["conv.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(np.asarray(model.bn.var[...]), arrays["bn.running_var"])
    exported = export_arrays(model, _small_mapping())
    for k, v in arrays.items():
        np.testing.assert_array_equal(exported[k], v)
    save_npz(tmp_path / "w.npz", exported)
    loaded = load_arrays(tmp_path / "w.npz")
    assert sorted(loaded) == sorted(arrays)


def test_apply_mapping_lists_every_problem_and_changes_nothing():
    model = _Small(nnx.Rngs(0))
    before = np.asarray(model.conv.kernel[...]).copy()
    arrays = export_arrays(model, _small_mapping())
    arrays["conv.weight"] = np.zeros((4, 3, 1, 1), np.float32)  # mis-shaped
    del arrays["bn.bias"]  # missing
    arrays["extra.weight"] = np.zeros(3, np.float32)  # unexpected
    arrays["bn.weight"] = np.ones(4, np.float32)
    with pytest.raises(WeightImportError) as err:
        apply_mapping(model, arrays, _small_mapping(), source="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg
    assert "missing from the checkpoint (1): ['bn.bias']" in msg
    assert "unexpected in the checkpoint (1): ['extra.weight']" in msg
    assert "conv.weight: checkpoint (4, 3, 1, 1)" in msg and "expects (3, 3, 3, 4)" in msg
    np.testing.assert_array_equal(np.asarray(model.conv.kernel[...]), before)
    np.testing.assert_array_equal(np.asarray(model.bn.scale[...]), np.ones(4))


def test_allow_missing_ignore_and_coverage():
    model = _Small(nnx.Rngs(0))
    arrays = export_arrays(model, _small_mapping())
    del arrays["conv.weight"]
    arrays["bn.num_batches_tracked"] = np.array(5)
    absent = apply_mapping(
        model,
        arrays,
        _small_mapping(),
        allow_missing=["conv.weight"],
        ignore=lambda k: k.endswith("num_batches_tracked"),
    )
    assert absent == ["conv.weight"]
    with pytest.raises(WeightImportError, match="allow_missing names not in the mapping"):
        apply_mapping(model, arrays, _small_mapping(), allow_missing=["typo.weight", "conv.weight"],
                      ignore=["bn.num_batches_tracked"])  # fmt: skip
    partial = {k: v for k, v in _small_mapping().items() if not k.startswith("bn.running")}
    with pytest.raises(WeightImportError, match=r"no checkpoint entry maps to: \['bn.mean', 'bn.var'\]"):  # fmt: skip
        apply_mapping(model, export_arrays(model, partial), partial)


def test_load_arrays_rejects_unknown_suffix(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"x")
    with pytest.raises(WeightImportError, match="unsupported weight file suffix"):
        load_arrays(p)
