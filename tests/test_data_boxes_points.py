"""YOLO box folders (real frames, the shipped sample) and the image + clicks CSV reader."""

import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from alcfcn_jax.data import SAMPLE_DIR, DataError, default_data_config, get_source
from alcfcn_jax.data import boxes as boxes_lib


def test_sample_shipped_small_and_covers_all_habitats():
    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size < 7_000_000  # the package data stays well under 10 MB
    assert (SAMPLE_DIR / "README.md").read_text().count("CC BY 4.0") >= 1
    habs = {}
    for split, n in (("train", 400), ("val", 80)):
        src = get_source(default_data_config("sample"), split)
        assert len(src) == n
        habs[split] = {src[i]["habitat"] for i in range(0, len(src), 20)} | {
            p.stem.split("_")[0] for p, _ in src.items
        }
    assert len(habs["train"]) == len(habs["val"]) == 20
    train_ids = {p.stem for p, _ in get_source(default_data_config("sample"), "train").items}
    val_ids = {p.stem for p, _ in get_source(default_data_config("sample"), "val").items}
    assert not train_ids & val_ids


def test_make_sample_rule_on_a_made_up_folder(tmp_path):
    from alcfcn_jax.data import make_sample

    src = tmp_path / "frames"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    sizes = {"1111": 30, "2222": 12}  # habitat -> frames
    for hab, n in sizes.items():
        for i in range(n):
            stem = f"{hab}_f{i:06d}_jpg.rf.{i:032x}"
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "images" / f"{stem}.jpg")
            (src / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.1 0.1\n" * (i % 3))
    chosen = make_sample.select(src, train_per_habitat=5)

    def frames(split, hab):
        return [int(p.stem.split("_f")[1][:6]) for p in chosen[split] if p.stem.startswith(hab)]

    # 30 frames: the 8 picks are int((k + 0.5) * 30 / 8) = 1, 5, 9, 13, 16, 20, 24, 28; odd k -> val.
    assert frames("val", "1111") == [5, 13, 20, 28]
    # Train: 5 spaced picks over the 26 others (0..29 without the val frames).
    rest = [i for i in range(30) if i not in (5, 13, 20, 28)]
    assert frames("train", "1111") == [rest[int((k + 0.5) * 26 / 5)] for k in range(5)]
    assert frames("val", "2222") == [int((k + 0.5) * 12 / 8) for k in (1, 3, 5, 7)]
    assert len(frames("train", "2222")) == 5
    assert not set(chosen["train"]) & set(chosen["val"])
    dst = tmp_path / "sample"
    counts = make_sample.main([str(src), f"--dst={dst}", "--train_per_habitat=5"])
    assert counts == {"train": 10, "val": 8}
    for split in ("train", "val"):
        images = sorted(p.stem for p in (dst / split / "images").iterdir())
        labels = sorted(p.stem for p in (dst / split / "labels").iterdir())
        assert images == labels == sorted(p.stem for p in chosen[split])
        for stem in labels:  # copied unchanged
            assert (dst / split / "labels" / f"{stem}.txt").read_text() == (
                src / "labels" / f"{stem}.txt"
            ).read_text()


def test_letterbox_detected_on_real_frames():
    files = sorted((SAMPLE_DIR / "train" / "images").iterdir())[::10]
    for p in files:
        arr = np.asarray(Image.open(p).convert("RGB"))
        assert boxes_lib.detect_letterbox(arr) == (79, 281, 0, 360), p.name
    # Synthetic check: bars of 10 rows, picture 20 rows, left/right untouched.
    img = np.zeros((40, 30, 3), np.uint8)
    img[10:30] = 120
    assert boxes_lib.detect_letterbox(img) == (10, 30, 0, 30)
    # A dark picture without bars is left alone.
    assert boxes_lib.detect_letterbox(np.full((40, 30, 3), 5, np.uint8)) == (0, 40, 0, 30)


def test_box_example_by_hand():
    split = SAMPLE_DIR / "train"
    stem = next(
        p.stem
        for p in sorted((split / "labels").iterdir())
        if p.read_text().strip().count("\n") >= 1
    )
    lab = np.loadtxt(split / "labels" / f"{stem}.txt", ndmin=2)
    cfg = default_data_config("sample")
    src = get_source(cfg, "train")
    ex = next(src[i] for i in range(len(src)) if src[i]["id"] == boxes_lib.frame_id(stem))
    assert ex["image"].shape == (202, 360, 3)
    assert ex["count"] == len(lab)
    cx, cy = lab[:, 1] * 360, lab[:, 2] * 360 - 79
    want = {(int(min(max(y, 0), 201)), int(x)) for x, y in zip(cx, cy)}
    assert set(map(tuple, np.argwhere(ex["points"] == 1).tolist())) == want
    np.testing.assert_allclose((ex["boxes"][:, 0] + ex["boxes"][:, 2]) / 2, cx, atol=1e-3)
    assert ex["boxes"].dtype == np.float32 and (ex["mask"] == 255).all()
    # Resized: short side 101 -> 101x180, points scaled by 0.5.
    cfg.image_short_side = 101
    ex2 = next(get_source(cfg, "train")[i] for i in range(len(src)) if src[i]["id"] == ex["id"])
    assert ex2["image"].shape == (101, 180, 3)
    want2 = {(int(min(max(y, 0), 201.99) * 0.5), int(x * 0.5)) for x, y in zip(cx, cy)}
    assert set(map(tuple, np.argwhere(ex2["points"] == 1).tolist())) == want2
    # Mask mode keeps the bars and marks them invalid.
    cfg.image_short_side, cfg.letterbox = None, "mask"
    ex3 = next(get_source(cfg, "train")[i] for i in range(len(src)) if src[i]["id"] == ex["id"])
    assert ex3["image"].shape == (360, 360, 3)
    assert ex3["pad"][79:281].all() and not ex3["pad"][:79].any() and not ex3["pad"][281:].any()


def _expected_val(stem: str) -> bool:
    """The documented split rule, written out: md5 of the frame name (Roboflow suffix
    ``_jpg.rf.<hash>`` dropped), first 8 hex digits mod 100, below 20."""
    name = stem.split("_jpg.rf.")[0]
    return int(hashlib.md5(name.encode()).hexdigest()[:8], 16) % 100 < 20


def test_box_reader_fixed_split_on_a_flat_folder(tmp_path):
    """The shipped frames copied into one flat folder: the hash rule splits them."""
    flat = tmp_path / "frames"
    for sub in ("images", "labels"):
        (flat / sub).mkdir(parents=True)
    stems, n_boxes = [], 0
    for split in ("train", "val"):
        for p in sorted((SAMPLE_DIR / split / "images").iterdir()):
            shutil.copy(p, flat / "images" / p.name)
            label = SAMPLE_DIR / split / "labels" / f"{p.stem}.txt"
            shutil.copy(label, flat / "labels" / label.name)
            stems.append(p.stem)
            n_boxes += len([line for line in label.read_text().splitlines() if line.strip()])
    cfg = default_data_config("boxes")
    cfg.data_dir = str(flat)
    tr, va = get_source(cfg, "train"), get_source(cfg, "val")
    want_val = {s for s in stems if _expected_val(s)}
    assert 0 < len(want_val) < len(stems)
    assert {p.stem for p, _ in va.items} == want_val
    assert {p.stem for p, _ in tr.items} == set(stems) - want_val
    assert sum(len(b) for _, b in tr.items) + sum(len(b) for _, b in va.items) == n_boxes
    ex = va[0]
    assert ex["image"].shape == (202, 360, 3) and ex["count"] == len(va.items[0][1])


@pytest.mark.skipif(
    not os.environ.get("ALCFCN_FRAMES_DIR"),
    reason="set ALCFCN_FRAMES_DIR to a copy of the 4,568 DeepFish frames to run this check",
)
def test_box_reader_on_all_real_frames_fixed_split():
    cfg = default_data_config("boxes")
    cfg.data_dir = os.environ["ALCFCN_FRAMES_DIR"]
    tr, va = get_source(cfg, "train"), get_source(cfg, "val")
    assert len(tr) + len(va) == 4568
    assert (len(tr), len(va)) == (3626, 942)
    everything = [p.stem for p, _ in list(tr.items) + list(va.items)]
    assert {p.stem for p, _ in va.items} == {s for s in everything if _expected_val(s)}
    assert sum(len(b) for _, b in tr.items) + sum(len(b) for _, b in va.items) == 11034


def _yolo_dir(tmp_path, lines):
    d = tmp_path / "yolo"
    for sub in ("images", "labels"):
        (d / sub).mkdir(parents=True)
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(d / "images" / "a_f1.jpg")
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(d / "images" / "a_f2.jpg")
    (d / "labels" / "a_f1.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (d / "labels" / "a_f2.txt").write_text(lines)
    cfg = default_data_config("boxes")
    cfg.data_dir = str(d)
    return d, cfg


def test_malformed_box_lines(tmp_path, caplog):
    d, cfg = _yolo_dir(tmp_path, "0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"a_f2\.txt, line 1: expected 'class cx cy w h'"):
        get_source(cfg, "all")
    (d / "labels" / "a_f2.txt").write_text("0 0.5 1.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"a_f2\.txt, line 1: box centre .* outside the image"):
        get_source(cfg, "all")
    (d / "labels" / "a_f2.txt").unlink()
    with pytest.raises(DataError, match=r"a_f2\.txt: label file not found"):
        get_source(cfg, "all")
    cfg.skip_bad_examples = True
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        src = get_source(cfg, "all")
    assert len(src) == 1 and "a_f2.txt" in caplog.text and "skipped 1" in caplog.text
    with pytest.raises(DataError, match="box folder not found"):
        cfg.data_dir = str(tmp_path / "nope")
        get_source(cfg, "all")


def _clicks_dir(tmp_path, csv_text):
    d = tmp_path / "clicks"
    (d / "images").mkdir(parents=True)
    Image.fromarray(np.full((50, 100, 3), 90, np.uint8)).save(d / "images" / "r_1.png")
    Image.fromarray(np.full((50, 100, 3), 90, np.uint8)).save(d / "images" / "r_2.png")
    (d / "points.csv").write_text(csv_text)
    cfg = default_data_config("points")
    cfg.data_dir = str(d)
    return d, cfg


def test_clicks_csv_reader(tmp_path):
    d, cfg = _clicks_dir(tmp_path, "image,x,y\nr_1.png,10,20\nr_1.png,99.5,49.9\nr_2.png,,\n")
    src = get_source(cfg, "all")
    ex = {src[i]["id"]: src[i] for i in range(2)}
    assert ex["r_1"]["count"] == 2 and ex["r_2"]["count"] == 0
    assert set(map(tuple, np.argwhere(ex["r_1"]["points"] == 1).tolist())) == {(20, 10), (49, 99)}
    assert ex["r_1"]["habitat"] == "r"
    cfg.image_short_side = 25  # 50x100 -> 25x50, clicks halved
    ex = get_source(cfg, "all")[0]
    assert ex["image"].shape == (25, 50, 3)
    assert set(map(tuple, np.argwhere(ex["points"] == 1).tolist())) == {(10, 5), (24, 49)}
    n_tr, n_va = len(get_source(cfg, "train")), len(get_source(cfg, "val"))
    assert n_tr + n_va == 2


def test_clicks_bad_input(tmp_path):
    d, cfg = _clicks_dir(tmp_path, "image,x,y\nr_1.png,100,20\nr_2.png,,\n")
    with pytest.raises(DataError, match=r"click \(100.0, 20.0\) for r_1\.png is outside the image"):
        get_source(cfg, "all")[0]
    (d / "points.csv").write_text("name,x,y\nr_1.png,1,2\n")
    with pytest.raises(DataError, match=r"points\.csv: missing column\(s\) \['image'\]"):
        get_source(cfg, "all")
    (d / "points.csv").write_text("image,x,y\nr_1.png,1,2\n")
    with pytest.raises(DataError, match=r"image r_2\.png has no row; add 'r_2\.png,,'"):
        get_source(cfg, "all")
    (d / "points.csv").write_text("image,x,y\nr_1.png,1,\nr_2.png,,\n")
    with pytest.raises(DataError, match=r"line 2: x and y must both be numbers"):
        get_source(cfg, "all")
    (d / "points.csv").write_text("image,x,y\nr_1.png,1,2\nr_2.png,,\nr_3.png,,\n")
    with pytest.raises(DataError, match=r"rows name images not in .*r_3\.png"):
        get_source(cfg, "all")
    (d / "points.csv").unlink()
    with pytest.raises(DataError, match=r"points\.csv: clicks CSV not found"):
        get_source(cfg, "all")
    shutil.rmtree(d / "images")
    (d / "points.csv").write_text("image,x,y\n")
    with pytest.raises(DataError, match=r"images: folder not found"):
        get_source(cfg, "all")


def test_example_count_reads_labels_not_images():
    from alcfcn_jax.data.budget import SubsetSource
    from alcfcn_jax.data.source import example_count

    src = get_source(default_data_config("sample"), "val")
    want = [int(src[i]["count"]) for i in range(len(src))]

    def refuse(item):
        raise AssertionError("an image was decoded to read a count")

    src._load = refuse
    assert [example_count(src, i) for i in range(len(src))] == want
    sub = SubsetSource(src, [3, 1])
    assert [example_count(sub, i) for i in range(2)] == [want[3], want[1]]
