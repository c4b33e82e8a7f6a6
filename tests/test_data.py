"""Datasets: the synthetic renderer, the ImageFolder reader and the factory (seelike.data)."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from seelike.data import (
    BadImageError,
    CLASS_NAMES,
    ImageFolderDataset,
    SyntheticSpec,
    dataset_fingerprint,
    dataset_meta,
    dataset_size,
    load_rgb,
    load_split_arrays,
    open_dataset,
    open_rendered_split,
    render,
    render_labels,
    render_masks,
    render_meta,
    rendered_split_name,
    scan_image_folder,
    split_indices,
    timm_data_config,
    timm_eval_transform,
    write_rendered_split,
)

SPLITS = {"train": 300, "test": 100, "analysis": 64}
CFG = {"kind": "synthetic", "n_classes": 10, "image_size": 32, "seed": 0, "splits": SPLITS}
SPEC = SyntheticSpec.from_config(CFG)
# shapes whose bounding-circle centre lies inside the shape
CENTRED = {"circle", "square", "triangle", "cross", "star", "diamond", "horizontal_bar",
           "vertical_bar", "hexagon", "ellipse", "arrow"}


# ------------------------------------------------------------------- synthetic: determinism
def test_render_is_a_function_of_seed_and_index_only():
    idx = np.array([5, 3, 1500, 0, 77])
    imgs, labels, meta = render(SPEC, idx)
    assert imgs.shape == (5, 32, 32, 3) and imgs.dtype == np.uint8
    assert labels.dtype == np.int64 and list(labels) == list(idx % 10)
    assert list(meta["index"]) == list(idx)
    # one at a time, reversed order, and inside a batch that spans a rendering chunk
    for k, i in enumerate(idx):
        assert np.array_equal(render(SPEC, [i])[0][0], imgs[k])
    rev = render(SPEC, idx[::-1])[0]
    assert np.array_equal(rev[::-1], imgs)
    big = render(SPEC, np.arange(1501))[0]  # > 1024 images per chunk at 32 px
    assert np.array_equal(big[[5, 3, 1500, 0, 77]], imgs)
    # another spec with the same seed renders the same pixels (splits do not matter)
    other = SyntheticSpec(seed=0, splits={"analysis": 3})
    assert np.array_equal(render(other, idx)[0], imgs)
    # a different seed gives different images
    imgs1 = render(SyntheticSpec(seed=1, splits=SPLITS), idx)[0]
    assert all(not np.array_equal(a, b) for a, b in zip(imgs, imgs1))


def test_224_rendering_is_the_same_scene_at_higher_resolution():
    spec224 = SyntheticSpec(image_size=224, splits=SPLITS)
    idx = np.arange(25)  # spans chunks at 224 px (20 images per chunk)
    imgs, labels, meta = render(spec224, idx)
    assert imgs.shape == (25, 224, 224, 3)
    assert np.array_equal(render(spec224, [24])[0][0], imgs[24])
    m32 = render_meta(SPEC, idx)
    np.testing.assert_allclose(meta["cx"], (m32["cx"] + 0.5) * 7 - 0.5)
    np.testing.assert_allclose(meta["size"], m32["size"] * 7)
    assert list(meta["label"]) == list(m32["label"])


def test_render_meta_matches_render():
    idx = np.arange(40, 60)
    _, _, meta = render(SPEC, idx)
    cheap = render_meta(SPEC, idx)
    assert meta.equals(cheap)
    assert list(meta.columns) == ["index", "label", "class_name", "cx", "cy", "size", "rotation"]
    # labels without any draw (what readers of a rendered split use) agree with the rendering,
    # for unordered indices too
    shuffled = np.random.default_rng(3).permutation(np.arange(0, 500))[:37]
    assert np.array_equal(render_labels(SPEC, idx), meta["label"].to_numpy())
    assert np.array_equal(render_labels(SPEC, shuffled), render(SPEC, shuffled)[1])
    assert render_labels(SPEC, idx).dtype == np.int64


# ------------------------------------------------------------------- synthetic: geometry
def test_recorded_positions_match_the_rendered_object():
    spec = SyntheticSpec(n_classes=len(CLASS_NAMES), image_size=48, seed=2, splits={"analysis": 160})
    idx = np.arange(160)
    masks = render_masks(spec, idx)
    plain, _, meta = render(spec, idx, background="plain", noise=False)
    yy, xx = np.mgrid[0:48, 0:48]
    for k, row in meta.iterrows():
        m = masks[k]
        cx, cy, r = row["cx"], row["cy"], row["size"] / 2
        # the bounding circle lies inside the image
        assert -0.5 - 1e-6 <= cx - r and cx + r <= 47.5 + 1e-6
        assert 0.35 * 48 - 1e-6 <= row["size"] <= 0.70 * 48 + 1e-6
        # every object pixel lies within the recorded circle (1 px antialiasing margin)
        inside = m > 0
        assert inside.any()
        assert np.hypot(xx[inside] - cx, yy[inside] - cy).max() <= r + 1.0
        # and the object covers a good part of it
        assert m.sum() > 0.15 * np.pi * r * r, row.class_name
        if row.class_name in CENTRED:
            assert m[int(round(cy)), int(round(cx))] > 0.5, row.class_name
        # on a plain background exactly the object pixels differ from the background
        img = plain[k].astype(int)
        bg = img[m == 0]
        assert (bg == bg[0]).all()
        full = img[m == 1]
        assert (np.abs(full - bg[0]).sum(-1) > 0).all()


def test_object_is_visible_on_textured_background():
    imgs, _, meta = render(SPEC, np.arange(200))
    masks = render_masks(SPEC, np.arange(200))
    for k in range(200):
        obj = imgs[k][masks[k] == 1].astype(float).mean(0)
        bg = imgs[k][masks[k] == 0].astype(float).mean(0)
        assert np.abs(obj - bg).max() > 60  # opposite brightness polarity


def test_colour_does_not_depend_on_class():
    """The class only selects the shape: the same index with a different n_classes has a
    different class but the same colours and position."""
    a = SyntheticSpec(n_classes=10, splits={"x": 1})
    b = SyntheticSpec(n_classes=11, splits={"x": 1})
    idx = np.arange(10, 40)  # labels differ between the two specs
    ia, la, ma = render(a, idx, noise=False)
    ib, lb, mb = render(b, idx, noise=False)
    assert (la != lb).any()
    np.testing.assert_allclose(ma[["cx", "cy", "size"]], mb[["cx", "cy", "size"]])
    ka, kb = render_masks(a, idx), render_masks(b, idx)
    for k in range(len(idx)):
        ca = ia[k][ka[k] == 1]
        cb = ib[k][kb[k] == 1]
        assert (ca == ca[0]).all() and (cb == cb[0]).all() and (ca[0] == cb[0]).all()


def test_class_balance_and_split_disjointness():
    sizes = {"train": 1003, "test": 250, "analysis": 64}
    spec = SyntheticSpec(splits=sizes)
    parts = {s: split_indices(spec, s) for s in sizes}
    assert {s: len(v) for s, v in parts.items()} == sizes
    # splits lie in name order whatever the config's order (steps see their config as JSON
    # with sorted keys; a notebook reading the YAML must get the same images)
    allidx = np.concatenate([parts[s] for s in sorted(sizes)])
    assert len(np.unique(allidx)) == len(allidx) and list(allidx) == list(range(len(allidx)))
    reordered = SyntheticSpec(splits=dict(reversed(list(sizes.items()))))
    assert reordered == spec and reordered.render_key("test") == spec.render_key("test")
    assert all(np.array_equal(split_indices(reordered, s), parts[s]) for s in sizes)
    yaml_order = {"kind": "synthetic", "image_size": 16, "splits": sizes}
    json_order = json.loads(json.dumps(yaml_order, sort_keys=True))
    assert list(json_order["splits"]) != list(sizes)
    assert np.array_equal(open_dataset(yaml_order, "train")[5][0], open_dataset(json_order, "train")[5][0])
    for s, v in parts.items():
        counts = np.bincount(v % 10, minlength=10)
        assert counts.max() - counts.min() <= 1, s
    meta = dataset_meta({"kind": "synthetic", "splits": sizes}, "test")
    assert list(meta["index"]) == list(range(250)) and list(meta["global_index"]) == list(parts["test"])
    assert list(meta["label"]) == list(parts["test"] % 10)
    with pytest.raises(ValueError, match="no split 'val'.*train"):
        split_indices(spec, "val")


def test_spec_validation():
    assert SyntheticSpec.from_config(CFG) == SyntheticSpec(splits=SPLITS)
    assert hash(SPEC) == hash(SyntheticSpec(splits=dict(SPLITS)))
    with pytest.raises(ValueError, match="unknown key.*colour"):
        SyntheticSpec.from_config({**CFG, "colour": 1})
    with pytest.raises(ValueError, match=f"n_classes must be an integer in \\[2, {len(CLASS_NAMES)}\\]"):
        SyntheticSpec(n_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError, match="negative size"):
        SyntheticSpec(splits={"train": -1})
    with pytest.raises(ValueError, match="non-negative"):
        render(SPEC, [-1])
    assert SPEC.fingerprint() != SyntheticSpec(seed=1, splits=SPLITS).fingerprint()


# ------------------------------------------------------------------- synthetic: dataset + cache
def test_synthetic_dataset_items_and_transforms():
    ds = open_dataset(CFG, "analysis")
    assert len(ds) == 64 and dataset_size(CFG, "analysis") == 64
    x, y, i = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    start = SPEC.split_range("analysis")[0]
    assert start == 0  # 'analysis' sorts before 'test' and 'train'
    assert (y, i) == (int((start + 7) % 10), 7)
    raw = render(SPEC, [start + 7])[0][0]
    expected = torch.from_numpy(raw).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(x, expected)
    batch = ds.__getitems__([7, 2])
    assert torch.equal(batch[0][0], x) and batch[1][2] == 2
    xb, yb, ib = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert xb.shape == (16, 3, 32, 32) and list(ib) == list(range(16))
    # a given transform receives a PIL image (so timm transforms work on synthetic data)
    seen = []
    ds2 = open_dataset(CFG, "analysis", transform=lambda im: seen.append(im) or torch.zeros(1))
    ds2[0]
    assert isinstance(seen[0], Image.Image) and seen[0].size == (32, 32) and seen[0].mode == "RGB"
    with pytest.raises(IndexError):
        ds[64]


def test_load_split_arrays_cache(tmp_path, monkeypatch):
    imgs, labels = load_split_arrays(CFG, "test", cache_dir=tmp_path)
    ref, ref_labels, _ = render(SPEC, split_indices(SPEC, "test"))
    assert np.array_equal(imgs, ref) and np.array_equal(labels, ref_labels)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".npz")  # no temporary file left behind
    mtime = os.path.getmtime(tmp_path / files[0])
    again = load_split_arrays(CFG, "test", cache_dir=tmp_path)
    assert np.array_equal(again[0], ref) and os.path.getmtime(tmp_path / files[0]) == mtime
    # a damaged cache file is re-rendered and replaced
    (tmp_path / files[0]).write_bytes(b"not an npz")
    assert np.array_equal(load_split_arrays(CFG, "test", cache_dir=tmp_path)[0], ref)
    # SEELIKE_CACHE is used when no cache_dir is given
    env_dir = tmp_path / "env"
    monkeypatch.setenv("SEELIKE_CACHE", str(env_dir))
    load_split_arrays(CFG, "analysis")
    assert len(os.listdir(env_dir)) == 1
    ds = open_dataset(CFG, "analysis", preload=True)
    assert ds.arrays is not None and torch.equal(ds[3][0], open_dataset(CFG, "analysis")[3][0])
    with pytest.raises(ValueError, match="synthetic datasets only"):
        load_split_arrays({"kind": "imagefolder", "root": str(tmp_path)}, "analysis")


def test_rendered_split_is_the_split_and_is_checked_before_use(tmp_path):
    out = tmp_path / "synth" / rendered_split_name(CFG, "test")
    write_rendered_split(CFG, "test", out, block=7)          # blocks that do not divide the split
    # no temporary file left behind; the sha256 recorded beside it
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".sha256"]
    ref, ref_labels, _ = render(SPEC, split_indices(SPEC, "test"))
    images, labels = open_rendered_split(CFG, "test", out)
    assert isinstance(images, np.memmap) and np.array_equal(images, ref) and np.array_equal(labels, ref_labels)
    mem, mem_labels = load_split_arrays(CFG, "test", rendered=out)     # what training reads: in memory
    assert not isinstance(mem, np.memmap) and np.array_equal(mem, ref) and np.array_equal(mem_labels, ref_labels)
    ds, fresh = open_dataset(CFG, "test", rendered=out), open_dataset(CFG, "test")
    for i in (0, 5, len(ds) - 1):
        x, y, idx = ds[i]
        fx, fy, fidx = fresh[i]
        assert torch.equal(x, fx) and (y, idx) == (fy, fidx)
    # another split's or another config's file is refused by name, before it is read
    with pytest.raises(ValueError, match=r"is not this dataset's split 'analysis'"):
        open_rendered_split(CFG, "analysis", out)
    other = dict(CFG, seed=CFG["seed"] + 1)
    with pytest.raises(ValueError, match="must be named"):
        write_rendered_split(other, "test", out)
    # a changed pixel, a wrong shape, a truncated file: each named, by the sha256 recorded at write
    from seelike.fileio import record_checksum

    bad = np.array(images)
    bad[-1, 0, 0, 0] ^= 1
    np.save(out, bad)
    with pytest.raises(ValueError, match=f"rendered split '{out}' changed since it was written"):
        open_rendered_split(CFG, "test", out)
    # and, past a matching sha256 (a file written by another renderer version), by its content
    record_checksum(out)
    with pytest.raises(ValueError, match="differs from a fresh rendering"):
        open_rendered_split(CFG, "test", out)
    np.save(out, ref[:-1])
    record_checksum(out)
    with pytest.raises(ValueError, match=r"holds uint8 \(\d+, 32, 32, 3\), expected uint8"):
        open_rendered_split(CFG, "test", out)
    np.save(out, ref)
    out.write_bytes(out.read_bytes()[:1000])
    record_checksum(out)
    with pytest.raises(ValueError, match=f"rendered split '{out}' is unreadable"):
        open_rendered_split(CFG, "test", out)


# ------------------------------------------------------------------- imagefolder
def _save(path, im, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)


def make_folder(root, bad=True):
    """class_a: RGB PNG, grayscale PNG, CMYK JPEG, RGBA PNG; class_b: palette PNG, nested
    upper-case .JPEG; class_c: empty; bad=True adds a .txt in class_b and class_d: corrupt JPEG, text '.png'."""
    _save(root / "class_a" / "rgb.png", Image.new("RGB", (40, 30), (10, 200, 30)))
    _save(root / "class_a" / "gray.png", Image.new("L", (30, 40), 77))
    _save(root / "class_a" / "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 255, 255, 0)), quality=95)
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 255))
    rgba.paste((255, 0, 0, 0), (0, 0, 10, 20))  # left half fully transparent (hidden red)
    _save(root / "class_a" / "rgba.png", rgba)
    pal = Image.new("RGB", (16, 16), (200, 100, 50)).convert("P", palette=Image.Palette.ADAPTIVE)
    _save(root / "class_b" / "pal.png", pal)
    _save(root / "class_b" / "sub" / "nested.JPEG", Image.new("RGB", (50, 50), (128, 128, 128)))
    (root / "class_c").mkdir()
    if bad:
        (root / "class_b" / "notes.txt").write_text("not an image")
        good = root / "class_a" / "rgb.png"
        (root / "class_d").mkdir()
        tmp = root / "tmp.jpg"
        Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp)
        (root / "class_d" / "corrupt.jpg").write_bytes(tmp.read_bytes()[:200])
        tmp.unlink()
        (root / "class_d" / "fake.png").write_text("hello, I am text")
        assert good.exists()
    return root


def test_scan_image_folder(tmp_path, caplog):
    root = make_folder(tmp_path / "val")
    with caplog.at_level(logging.WARNING):
        classes, samples = scan_image_folder(root)
    assert classes == ["class_a", "class_b", "class_c", "class_d"]
    assert samples == [
        ("class_a/cmyk.jpg", 0), ("class_a/gray.png", 0), ("class_a/rgb.png", 0), ("class_a/rgba.png", 0),
        ("class_b/pal.png", 1), ("class_b/sub/nested.JPEG", 1),
        ("class_d/corrupt.jpg", 3), ("class_d/fake.png", 3),
    ]
    assert "class_c" in caplog.text  # empty class folder reported, kept for label alignment


def test_rgb_conversions(tmp_path):
    root = make_folder(tmp_path / "val", bad=False)
    for rel in ["class_a/rgb.png", "class_a/gray.png", "class_a/cmyk.jpg", "class_a/rgba.png", "class_b/pal.png"]:
        assert load_rgb(root / rel).mode == "RGB", rel
    gray = np.asarray(load_rgb(root / "class_a/gray.png"))
    assert gray.shape == (40, 30, 3) and (gray == 77).all()
    cmyk = np.asarray(load_rgb(root / "class_a/cmyk.jpg")).astype(int)
    assert np.abs(cmyk - [255, 0, 0]).max() <= 8  # C=0 M=Y=255 K=0 is red
    rgba = np.asarray(load_rgb(root / "class_a/rgba.png"))
    assert (rgba[:, :10] == 255).all()  # transparent -> composited on white
    assert (rgba[:, 10:] == [0, 0, 255]).all()
    pal = np.asarray(load_rgb(root / "class_b/pal.png")).astype(int)
    assert np.abs(pal - [200, 100, 50]).max() <= 2
    ds = ImageFolderDataset(root, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    assert len(ds) == 6 and ds.ignored_files == [] and ds.empty_classes == ["class_c"]
    x, y, i = ds[5]
    assert (y, i) == (1, 5) and x.shape == (50, 50, 3)
    meta = dataset_meta({"kind": "imagefolder", "root": str(root)}, "analysis")
    assert list(meta.columns) == ["index", "relpath", "label", "class_name"]
    assert meta["relpath"][5] == "class_b/sub/nested.JPEG" and meta["class_name"][5] == "class_b"


def test_bad_files_error_names_the_path(tmp_path):
    root = make_folder(tmp_path / "val")
    with pytest.raises(ValueError, match="not images.*class_b/notes.txt.*on_bad_file: skip"):
        open_dataset({"kind": "imagefolder", "root": str(root)}, "analysis")
    (root / "class_b" / "notes.txt").unlink()
    ds = open_dataset({"kind": "imagefolder", "root": str(root)}, "analysis")
    assert len(ds) == 8
    for k, name in [(6, "corrupt.jpg"), (7, "fake.png")]:
        with pytest.raises(BadImageError, match=name) as e:
            ds[k]
        assert e.value.path == str(root / "class_d" / name)
        assert str(root) in str(e.value)
    x, y, i = ds[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32  # default eval transform


def test_bad_files_skip_reports_them(tmp_path, caplog):
    root = make_folder(tmp_path / "val")
    cfg = {"kind": "imagefolder", "root": str(root), "on_bad_file": "skip"}
    with caplog.at_level(logging.WARNING):
        ds = open_dataset(cfg, "analysis")
    assert [r for r, _ in ds.skipped] == ["class_b/notes.txt", "class_d/corrupt.jpg", "class_d/fake.png"]
    assert len(ds) == 6 == dataset_size(cfg, "analysis")
    assert "class_d/corrupt.jpg" in caplog.text and "class_d/fake.png" in caplog.text and "notes.txt" in caplog.text
    assert all(ds[k][0].shape == (3, 224, 224) for k in range(len(ds)))


def test_folder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        scan_image_folder(missing)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")  # images but no class folders
    with pytest.raises(ValueError, match=f"{tmp_path / 'flat'} has no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "cls1").mkdir(parents=True)
    (tmp_path / "empty" / "cls2").mkdir()
    (tmp_path / "empty" / "cls2" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'} contains no image files"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_bad_file"):
        ImageFolderDataset(tmp_path / "empty", on_bad_file="ignore")
    cfg = {"kind": "imagefolder", "root": str(tmp_path / "flat")}
    with pytest.raises(ValueError, match="single evaluation split.*'train'"):
        open_dataset(cfg, "train")
    with pytest.raises(ValueError, match="unknown key.*colour"):
        open_dataset({**cfg, "colour": 1}, "analysis")
    with pytest.raises(ValueError, match="kind"):
        open_dataset({"kind": "webdataset"}, "analysis")


def test_fingerprint_ignores_location_but_not_content(tmp_path):
    a = make_folder(tmp_path / "a", bad=False)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    fa = dataset_fingerprint({"kind": "imagefolder", "root": str(a)})
    assert fa == dataset_fingerprint({"kind": "imagefolder", "root": str(b)})
    (b / "class_c" / "new.png").write_bytes((a / "class_a" / "rgb.png").read_bytes())
    assert fa != dataset_fingerprint({"kind": "imagefolder", "root": str(b)})
    assert dataset_fingerprint(CFG) == SPEC.fingerprint()


def test_plan_of_a_skip_folder_excludes_its_bad_files_and_jobs_do_not_decode_again(tmp_path, monkeypatch):
    """The plan step decodes a skip folder once and records the unreadable files; a job opening the
    dataset with that plan gets the same listing without decoding any file."""
    from seelike.data import dataset_listing
    from seelike.data import imagefolder
    from seelike.plan import Plan, make_plan

    root = make_folder(tmp_path / "val")
    cfg = {"kind": "imagefolder", "root": str(root), "on_bad_file": "skip"}
    checked = ImageFolderDataset(root, on_bad_file="skip")
    size, fingerprint, excluded = dataset_listing(cfg, "analysis")
    assert size == 6 and excluded == ["class_b/notes.txt", "class_d/corrupt.jpg", "class_d/fake.png"]
    assert fingerprint == dataset_fingerprint(cfg)
    plan = make_plan(f"val:{fingerprint}", np.arange(size), 4, 4, 1, 0, excluded=excluded)
    plan = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))          # as the plan file gives it
    assert plan.excluded == tuple(excluded)

    def no_decoding(path):
        raise AssertionError(f"decoded {path}")
    monkeypatch.setattr(imagefolder, "_check_file", no_decoding)
    ds = open_dataset(cfg, "analysis", plan=plan)
    assert ds.samples == checked.samples and len(ds) == 6
    assert [r for r, _ in ds.skipped] == [r for r, _ in checked.skipped]
    with pytest.raises(AssertionError, match="decoded"):                 # without the plan it would decode
        open_dataset(cfg, "analysis")
    # a plan written before plans had `excluded` lists nothing: the job falls back to decoding the folder
    monkeypatch.undo()
    old = make_plan(f"val:{fingerprint}", np.arange(size), 4, 4, 1, 0)
    assert "excluded" not in old.to_dict()
    assert open_dataset(cfg, "analysis", plan=old).samples == checked.samples
    # a folder planned under on_bad_file: error lists nothing to exclude, and the same plan there is refused
    with pytest.raises(ValueError, match="listed as unreadable.*on_bad_file is 'error'"):
        ImageFolderDataset(root, known_bad=excluded)


@pytest.mark.parametrize("on_bad_file", ["error", "skip"])
def test_a_folder_changed_since_the_plan_is_refused(tmp_path, on_bad_file):
    """Adding, removing or renaming a file moves every later index: a job must not read other images
    under the plan's indices."""
    from seelike.data import dataset_listing
    from seelike.plan import make_plan

    root = make_folder(tmp_path / "val", bad=on_bad_file == "skip")
    cfg = {"kind": "imagefolder", "root": str(root), "on_bad_file": on_bad_file}
    size, fingerprint, excluded = dataset_listing(cfg, "analysis")
    plan = make_plan(f"val:{fingerprint}", np.arange(size), 4, 4, 1, 0, excluded=excluded)
    assert len(open_dataset(cfg, "analysis", plan=plan)) == size
    (root / "class_a" / "added.png").write_bytes((root / "class_a" / "rgb.png").read_bytes())   # sorts first
    with pytest.raises(ValueError, match=r"image folder .*val no longer matches the example plan of dataset 'val' "
                                         r"\(fingerprint [0-9a-f]{12} when planned.*--forcerun plan"):
        open_dataset(cfg, "analysis", plan=plan)
    (root / "class_a" / "added.png").unlink()
    (root / "class_a" / "gray.png").rename(root / "class_a" / "grey.png")
    with pytest.raises(ValueError, match="no longer matches the example plan"):
        open_dataset(cfg, "analysis", plan=plan)


def test_synthetic_dataset_is_checked_against_the_plan():
    from seelike.plan import make_plan

    plan = make_plan(f"synth:{SPEC.fingerprint()}", np.arange(64), 8, 4, 1, 0)
    assert len(open_dataset(CFG, "analysis", plan=plan)) == 64
    other = dict(CFG, seed=1)
    with pytest.raises(ValueError, match=r"synthetic dataset \(seed 1\) no longer matches the example plan of "
                                         r"dataset 'synth'.*its settings or the renderer's version changed"):
        open_dataset(other, "analysis", plan=plan)


# ------------------------------------------------------------------- timm transforms
def test_timm_eval_transform(tmp_path):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    tf = timm_eval_transform(model)
    cfg = timm_data_config(model)
    assert cfg["input_size"] == (3, 224, 224) and tuple(cfg["mean"]) == (0.5, 0.5, 0.5)
    assert timm_data_config("vit_tiny_patch16_224") == cfg
    assert timm_data_config(model.pretrained_cfg) == cfg
    # another model's own preprocessing (ImageNet mean/std) gives different tensors
    tf_rn = timm_eval_transform("resnet18.a1_in1k")
    root = make_folder(tmp_path / "val", bad=False)
    ds = open_dataset({"kind": "imagefolder", "root": str(root)}, "analysis", transform=tf)
    x, _, _ = ds[2]  # the 40x30 RGB image
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = (torch.tensor([10, 200, 30]) / 255 - 0.5) / 0.5
    assert torch.allclose(x[:, 112, 112], expected, atol=0.02)
    assert not torch.allclose(tf_rn(load_rgb(root / "class_a/rgb.png"))[:, 112, 112], expected, atol=0.02)
    # timm transforms work on synthetic data too, and the model runs on the result
    syn = open_dataset(CFG, "analysis", transform=tf)
    xb = torch.stack([syn[k][0] for k in range(2)])
    assert xb.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert model(xb).shape == (2, 10)
    with pytest.raises(ValueError, match="no pretrained config.*not_a_model"):
        timm_data_config("not_a_model")
