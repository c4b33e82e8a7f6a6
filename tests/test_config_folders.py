"""Image folders are checked when the DAG is built, by file name only (nothing is decoded): an empty
folder, class folders without images, and fewer images than the analysis or a training recipe needs
are each one ConfigError naming the key and the folder. YAML syntax errors name file, line and column."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import snakemake, tiny_config, write_config, write_image_names
from seelike import config as sc


def folder_config(val: Path, train: Path | None = None, n_examples: int = 64, **recipe) -> dict:
    """The tiny config analysing image folder `val` (and training `vit` on `train` when given)."""
    cfg = tiny_config()
    cfg["datasets"]["val"] = {"kind": "imagefolder", "root": str(val)}
    cfg["analysis"] = {"dataset": "val", "n_examples": n_examples, "seed": 0}
    if train is not None:
        cfg["datasets"]["train"] = {"kind": "imagefolder", "root": str(train), "split": "train"}
        cfg["models"]["vit"]["recipe"] = {"dataset": "train", "test_dataset": "val", "epochs": 1, "batch_size": 64,
                                          **recipe}
    return cfg


def error_of(cfg: dict) -> str:
    with pytest.raises(sc.ConfigError) as e:
        sc.load(cfg, check_timm=False)
    return str(e.value)


def test_enough_images_pass(tmp_path):
    val = write_image_names(tmp_path / "val", 4, 16)                       # exactly n_examples = 64
    train = write_image_names(tmp_path / "train", 4, 16)                   # exactly one batch of 64
    cfg = sc.load(folder_config(val, train), check_timm=False)
    assert cfg["analysis"]["n_examples"] == 64


def test_empty_image_folder_names_the_key(tmp_path):
    val = tmp_path / "val"
    (val / ".cache").mkdir(parents=True)        # hidden: not a class folder
    (val / "loose.JPEG").touch()                # images directly in root belong to no class
    msg = error_of(folder_config(val))
    assert msg.startswith("config key datasets.val.root: ")
    assert f"'{val}'" in msg and "no class sub-folders" in msg and f"{val}/<class>/<image files>" in msg


def test_class_folders_without_images_name_the_key(tmp_path):
    val = tmp_path / "val"
    for c in ("a", "b", "c"):
        (val / c).mkdir(parents=True)
    (val / "a" / "README.txt").touch()          # not an image extension
    (val / "b" / ".hidden.JPEG").touch()        # hidden: the reader skips it
    (val / "c" / ".sub").mkdir()
    (val / "c" / ".sub" / "x.png").touch()      # in a hidden folder: skipped too
    msg = error_of(folder_config(val))
    assert msg.startswith("config key datasets.val.root: ")
    assert f"'{val}'" in msg and "no image files" in msg and "3 class folders" in msg and ".jpeg" in msg


def test_fewer_images_than_n_examples_names_the_key(tmp_path):
    val = write_image_names(tmp_path / "val", 3, 10)                       # 30 < 64
    msg = error_of(folder_config(val, n_examples=64))
    assert msg.startswith("config key analysis.n_examples: ")
    assert f"'{val}'" in msg and "datasets.val.root" in msg and "30 image files" in msg and "64" in msg
    assert "lower analysis.n_examples to 16" in msg   # the largest multiple of cka.minibatch_size (16) that fits


def test_fewer_images_than_a_recipe_batch_names_the_key(tmp_path):
    val = write_image_names(tmp_path / "val", 4, 16)
    train = write_image_names(tmp_path / "train", 4, 10)                   # 40 < batch_size 64
    msg = error_of(folder_config(val, train))
    assert msg.startswith("config key models.vit.recipe.batch_size: ")
    assert f"'{train}'" in msg and "datasets.train.root" in msg and "40 image files" in msg and "64" in msg


def test_train_fraction_counts_against_the_batch(tmp_path):
    """train_fraction keeps max(1, round(fraction * n)) images of each class (data/subsets.py); the
    kept images must fill one batch."""
    val = write_image_names(tmp_path / "val", 4, 16)
    train = write_image_names(tmp_path / "train", 4, 40)                   # 160 images
    sc.load(folder_config(val, train, batch_size=16, train_fraction=0.1), check_timm=False)   # 4 x 4 = 16
    msg = error_of(folder_config(val, train, batch_size=16, train_fraction=0.05))           # 4 x 2 = 8
    assert msg.startswith("config key models.vit.recipe.batch_size: ")
    assert f"'{train}'" in msg and "holds 160 image files, of which train_fraction 0.05 keeps 8" in msg
    # a swept fraction is named by the sweep that made the model
    cfg = folder_config(val, train, batch_size=16)
    cfg["models"]["vit"]["sweep"] = {"key": "recipe.train_fraction", "values": [0.5, 0.05]}
    msg = error_of(cfg)
    assert msg.startswith("config key models.vit.recipe.batch_size: ") and "models.vit.sweep" in msg
    assert "vit_0p05" in msg and f"'{train}'" in msg


def test_count_by_name_matches_the_reader(tmp_path):
    """The DAG-time count lists exactly the files the reader will read (by name, without decoding)."""
    from seelike.data.imagefolder import count_image_files, scan_image_folder

    root = tmp_path / "val"
    write_image_names(root, 3, 5)
    (root / "c0000" / "nested" / "deeper").mkdir(parents=True)
    (root / "c0000" / "nested" / "deeper" / "x.PNG").touch()
    (root / "c0001" / "notes.txt").touch()
    (root / "c0001" / ".DS_Store").touch()
    (root / "c0002" / ".thumbs").mkdir()
    (root / "c0002" / ".thumbs" / "t.jpg").touch()
    (root / "empty_class").mkdir()
    (root / ".hidden_class").mkdir()
    (root / ".hidden_class" / "h.jpg").touch()
    (root / "stray.jpg").touch()
    counts = count_image_files(root)
    classes, samples = scan_image_folder(root)
    assert list(counts) == classes == ["c0000", "c0001", "c0002", "empty_class"]
    assert sum(counts.values()) == len(samples) == 16
    assert counts == {c: sum(1 for _, label in samples if label == i) for i, c in enumerate(classes)}


# --- YAML files: syntax errors and duplicate keys name file, line and column ---------------------

def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    f = tmp_path / "broken.yaml"
    f.write_text("datasets:\n  synth:\n    kind: synthetic\n    splits: [1, 2\nmodels: {}\n")
    with pytest.raises(sc.ConfigError) as e:
        sc.load_file(f)
    msg = str(e.value)
    assert msg.startswith(f"config file '{f}' line 5, column 7: not valid YAML: ")
    assert "expected ',' or ']'" in msg and "line 4, column 13" in msg and "<unicode string>" not in msg
    # `seelike validate FILE` is how to see it when Snakemake says only "Config file is not valid JSON or YAML"
    from seelike.cli import main

    assert main(["validate", str(f)]) == 1
    assert f"config file '{f}' line 5, column 7" in capsys.readouterr().err


def test_duplicate_key_names_line_and_column(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("models:\n  vit: {source: {kind: recipe}}\n  vit: {source: {kind: recipe}}\n"
                 "cka: {minibatch_size: 4, minibatch_size: 8}\n")
    with pytest.raises(sc.ConfigError) as e:
        sc.check_duplicate_keys(f)
    assert str(e.value).startswith(f"config file '{f}' line 3, column 3: duplicate key 'models.vit' (first given "
                                   "at line 2, column 3)")
    f.write_text("cka: {minibatch_size: 4, minibatch_size: 8}\n")
    with pytest.raises(sc.ConfigError, match=r"line 1, column 26: duplicate key 'cka\.minibatch_size' \(first "
                                             r"given at line 1, column 7\)"):
        sc.check_duplicate_keys(f)


# --- through the real workflow --------------------------------------------------------------------

def test_too_small_image_folder_fails_the_dry_run(tmp_path):
    val = write_image_names(tmp_path / "val", 3, 10)                       # 30 < 64
    cfgfile = write_config(tmp_path / "small.yaml", folder_config(val, n_examples=64))
    proc = snakemake(tmp_path / "wd", cfgfile, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "seelike: config key analysis.n_examples" in out and str(val) in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "wd" / "results").exists()
