"""DeepFish layout: TFDS builder on a synthetic tree, preprocessing, overlap removal, bad input."""

import logging
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from alcfcn_jax.data import DataError, default_data_config, get_source, synthetic
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.deepfish import tree as tree_lib

SPEC = synthetic.SyntheticSpec(height=48, width=80, seg_sizes=(4, 3, 3), loc_sizes=(6, 3, 3))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> pathlib.Path:
    return synthetic.write_tree(tmp_path_factory.mktemp("df") / "tree", SPEC)


def _cfg(root, reader="raw", **kw):
    cfg = default_data_config("deepfish")
    cfg.data_dir = str(root)
    cfg.tfds_dir = str(pathlib.Path(root).parent / f"tfds_{reader}")
    cfg.reader = reader
    cfg.image_short_side = None
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _check_example(ex, subset):
    h, w = ex["image"].shape[:2]
    assert ex["image"].dtype == np.float32 and ex["image"].shape == (h, w, 3)
    assert ex["points"].dtype == np.int32 and ex["points"].shape == (h, w)
    assert ex["mask"].dtype == np.int32 and ex["mask"].shape == (h, w)
    assert set(np.unique(ex["points"])) <= {0, 1, 255}
    if subset == "fish_seg":
        assert set(np.unique(ex["mask"])) <= {0, 1}
        assert ex["count"] == (ex["points"] == 1).sum()
        assert (ex["points"] == 0).sum() == (ex["points"] == 1).sum()  # bg_points=-1
    else:
        assert (ex["mask"] == 255).all()
        assert (ex["points"] == 0).sum() == 0
    assert ex["habitat"] == ex["id"].split("/")[1].split("_")[0]


def test_builder_prepare_and_read_every_config_and_split(tree, monkeypatch):
    cfg = _cfg(tree, reader="tfds")
    raw = _cfg(tree, reader="raw")
    root = tree_lib.DeepFishTree(tree)
    for subset in ("fish_seg", "fish_loc"):
        for split in ("train", "val", "test"):
            name = f"{subset}:{split}"
            src, ref = get_source(cfg, name), get_source(raw, name)
            expected = root.ids(subset, split)
            assert len(src) == len(ref) == len(expected) > 0
            by_id = {ref[i]["id"]: ref[i] for i in range(len(ref))}
            for i in range(len(src)):
                ex = src[i]
                _check_example(ex, subset)
                other = by_id[ex["id"]]  # TFDS path == direct path, exactly
                for k in ("image", "points", "mask", "count", "habitat"):
                    np.testing.assert_array_equal(ex[k], other[k], err_msg=f"{name} {k}")
    # Preparing again is a no-op: no example is generated and no prepared file changes.
    from alcfcn_jax.data.deepfish.deepfish_dataset_builder import DeepFish

    def files():
        base = pathlib.Path(cfg.tfds_dir)
        return {p: p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    before = files()
    assert before

    def regenerate(*args, **kwargs):
        raise AssertionError("the prepared dataset was generated again")

    monkeypatch.setattr(DeepFish, "_generate_examples", regenerate)
    assert len(get_source(cfg, "fish_seg:train")) == len(root.seg_ids("train"))
    assert files() == before


def test_builder_default_configs_at_short_side_256(tree):
    cfg = _cfg(tree, reader="tfds", image_short_side=256)
    assert cfg.image_short_side == default_data_config("deepfish").image_short_side
    src = get_source(cfg, "fish_loc:val")
    assert src[0]["image"].shape == (256, 426, 3)  # 48x80 -> short side 256
    assert "fish_loc/" in src.name


def test_split_names_follow_config(tree):
    cfg = _cfg(tree, config_name="fish_loc")
    tr = tree_lib.DeepFishTree(tree)
    assert len(get_source(cfg, "train")) == len(tr.loc_train_rows())
    assert [get_source(cfg, "val")[i]["id"] for i in range(3)] == tr.seg_ids("val")
    cfg.config_name = "fish_seg"
    assert len(get_source(cfg, "train")) == len(tr.seg_ids("train"))


def test_overlap_removed_and_checked(tree):
    tr = tree_lib.DeepFishTree(tree)
    raw_train = {i for i, _ in tr.loc_rows("train")}
    assert len(raw_train & tr.eval_ids()) == 2  # the synthetic tree plants two
    kept = {i for i, _ in tr.loc_train_rows()}
    assert kept == raw_train - tr.eval_ids() and not kept & tr.eval_ids()
    train_ids = [get_source(_cfg(tree), "train")[i]["id"] for i in range(len(kept))]
    tree_lib.check_no_overlap(train_ids, tr.eval_ids())
    with pytest.raises(DataError, match="evaluation image"):
        tree_lib.check_no_overlap(train_ids + [tr.seg_ids("val")[0]], tr.eval_ids())


def test_resized_sizes_by_hand():
    assert pp.resized_size(1080, 1920, 256) == (256, 455)
    assert pp.resized_size(1920, 1080, 256) == (455, 256)
    assert pp.resized_size(48, 80, 32) == (32, 53)
    assert pp.resized_size(48, 80, None) == (48, 80)


def test_resize_is_pil_bilinear_and_nearest():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (108, 192, 3), np.uint8))
    out = pp.resize_image(img, 25)
    assert out.size == (44, 25)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.resize((44, 25), Image.BILINEAR)))
    mask = (rng.random((108, 192)) > 0.5).astype(np.uint8) * 255
    got = pp.resize_nearest(mask, (25, 44))
    assert set(np.unique(got)) <= {0, 255}
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(mask).resize((44, 25), 0)))


def test_mask_points_centroid_and_edt_by_hand():
    m = np.zeros((10, 12), np.uint8)
    m[1:4, 1:4] = 1  # square: centroid (2, 2)
    m[6:9, 6] = 1  # L: (6,6)(7,6)(8,6)(8,7)(8,8)(8,9) -> mean (7.5, 7.0)
    m[8, 7:10] = 1
    m[0:2, 10:12] = 1  # 2x2 at the border: centroid (0.5, 10.5) -> (0, 10)
    cen = pp.mask_points(m, "centroid")
    assert sorted(map(tuple, cen.tolist())) == [(0, 10), (2, 2), (7, 7)]
    assert m[7, 7] == 0  # the reference's centroid can fall outside its blob
    edt = pp.mask_points(m, "edt_max")
    assert all(m[y, x] == 1 for y, x in edt)
    assert (2, 2) in map(tuple, edt.tolist())
    # 8-connectivity: diagonal neighbours are one blob.
    d = np.eye(5, dtype=np.uint8)
    assert len(pp.mask_points(d)) == 1
    with pytest.raises(ValueError, match="point_placement"):
        pp.mask_points(m, "middle")


def test_background_points_follow_reference_rule():
    mask = np.zeros((20, 30), np.int32)
    mask[5:10, 5:25] = 1
    got = pp.background_points(mask, 4, seed=1)
    ys, xs = np.nonzero(mask == 0)
    np.random.seed(1)  # the reference draws from numpy's global legacy generator
    want = []
    for _ in range(4):
        y = np.random.choice(ys)
        want.append((y, np.random.choice(xs[ys == y])))
    assert got.tolist() == [list(map(int, w)) for w in want]
    assert (mask[got[:, 0], got[:, 1]] == 0).all()


def test_fishloc_points_scaled_from_full_resolution(tmp_path):
    root = synthetic.write_tree(tmp_path / "t", synthetic.SyntheticSpec(height=108, width=192))
    tr = tree_lib.DeepFishTree(root)
    fid, count = next(r for r in tr.loc_rows("val") if r[1] > 0)
    full = np.asarray(Image.open(root / "Localization" / "masks" / f"{fid}.png"))
    ys, xs = np.nonzero(full)
    cfg = _cfg(root, image_short_side=64)
    src = get_source(cfg, "fish_loc:val")
    ex = next(src[i] for i in range(len(src)) if src[i]["id"] == fid)
    assert ex["image"].shape == (64, 113, 3)
    want = {(int(y * 64 / 108), int(x * 113 / 192)) for y, x in zip(ys, xs)}
    assert set(map(tuple, np.argwhere(ex["points"] == 1).tolist())) == want
    assert ex["count"] == count


def test_fishseg_points_from_resized_mask(tree):
    cfg = _cfg(tree, image_short_side=32, point_placement="edt_max", bg_points=0)
    src = get_source(cfg, "fish_seg:train")
    for i in range(len(src)):
        ex = src[i]
        assert ex["image"].shape == (32, 53, 3)
        assert (ex["mask"][ex["points"] == 1] == 1).all()  # edt_max is inside the blob
        assert (ex["points"] == 0).sum() == 0


# ---------------------------------------------------------------- bad input


def _copy(tree, tmp_path):
    dst = tmp_path / "tree"
    shutil.copytree(tree, dst)
    return dst


def test_missing_folder_and_csv(tree, tmp_path):
    with pytest.raises(DataError, match="DeepFish folder not found"):
        get_source(_cfg(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match="data_dir is empty"):
        get_source(default_data_config("deepfish"), "train")
    root = _copy(tree, tmp_path)
    (root / "Segmentation" / "val.csv").unlink()
    with pytest.raises(DataError, match=r"val\.csv: split CSV not found"):
        get_source(_cfg(root), "val")


def test_wrong_columns(tree, tmp_path):
    root = _copy(tree, tmp_path)
    p = root / "Localization" / "test.csv"
    p.write_text(p.read_text().replace("counts", "n_fish"))
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) \['counts'\]"):
        get_source(_cfg(root), "fish_loc:test")


def test_undecodable_image_raises_or_skips(tree, tmp_path, caplog):
    root = _copy(tree, tmp_path)
    fid = tree_lib.DeepFishTree(root).seg_ids("test")[1]
    (root / "Segmentation" / "images" / f"{fid}.jpg").write_bytes(b"not a jpeg")
    src = get_source(_cfg(root), "test")
    with pytest.raises(DataError, match=f"{fid}.jpg: cannot decode image"):
        [src[i] for i in range(len(src))]
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        src = get_source(_cfg(root, skip_bad_examples=True), "test")
    assert len(src) == SPEC.seg_sizes[2] - 1
    assert f"{fid}.jpg" in caplog.text and "skipped 1 bad example" in caplog.text
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        src = get_source(_cfg(root, reader="tfds", skip_bad_examples=True), "test")
    assert len(src) == SPEC.seg_sizes[2] - 1


def test_undecodable_image_fails_tfds_prepare(tree, tmp_path):
    root = _copy(tree, tmp_path)
    fid = tree_lib.DeepFishTree(root).seg_ids("val")[0]
    (root / "Segmentation" / "images" / f"{fid}.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="cannot decode image"):
        get_source(_cfg(root, reader="tfds"), "val")


def test_mask_size_mismatch(tree, tmp_path):
    root = _copy(tree, tmp_path)
    fid = tree_lib.DeepFishTree(root).seg_ids("val")[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(
        root / "Segmentation" / "masks" / f"{fid}.png"
    )
    with pytest.raises(DataError, match=r"size 10x10 \(WxH\) differs from its image"):
        get_source(_cfg(root), "val")[0]


def test_point_count_disagreeing_with_csv(tree, tmp_path):
    root = _copy(tree, tmp_path)
    p = root / "Localization" / "val.csv"
    lines = p.read_text().splitlines()
    fid, lab, cnt = lines[1].split(",")
    lines[1] = f"{fid},{lab},{int(cnt) + 1}"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match=f"{fid}.png: point map has {cnt} non-zero.*is {int(cnt) + 1}"
    ):
        get_source(_cfg(root), "fish_loc:val")[0]
