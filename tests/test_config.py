"""Every bad config gets one clear message naming the key; both shipped configs validate."""
from pathlib import Path

import pytest
import yaml

from seelike import config as sc

ROOT = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def paper(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["datasets"]["imagenet_val"]["root"] = str(tmp_path)
    (tmp_path / "train").mkdir(exist_ok=True)
    cfg["datasets"]["imagenet_train"]["root"] = str(tmp_path / "train")
    return cfg


def test_demo_config_validates_and_fills_defaults():
    cfg = sc.load(demo())
    assert cfg["cka"]["estimator"] == "unbiased"
    assert cfg["executor"]["default"] == "local"
    assert cfg["models"]["vit"]["family"] == "vit"
    assert cfg["models"]["mixer"]["family"] == "mixer"
    assert cfg["models"]["resnet"]["family"] == "cnn"
    assert sc.cross_pairs(cfg) == [("vit", "vit_less_data"), ("vit", "resnet"), ("vit", "mixer"), ("resnet", "mixer")]
    # sweeps became models of the registry
    assert {"vit5_none", "vit5_1", "vit5_4", "vit5_frac_0p1", "vit5_frac_0p3"} <= set(cfg["models"])


def test_paper_config_validates(tmp_path):
    cfg = sc.load(paper(tmp_path))
    assert cfg["models"]["vit_b32"]["arch"] == "vit_base_patch32_224"
    assert cfg["models"]["vit_b32"]["source"]["timm_name"] == "vit_base_patch32_224.augreg_in21k"
    recipe = cfg["models"]["vitb32_frac_0p03"]["recipe"]   # the paper-scale retraining recipes
    assert recipe["dataset"] == "imagenet_train" and recipe["train_fraction"] == 0.03 and recipe["steps"] == 112590


def bad(mutate, tmp_path=None):
    cfg = demo()
    mutate(cfg)
    with pytest.raises(sc.ConfigError) as e:
        sc.load(cfg)
    return str(e.value)


def test_unknown_timm_model():
    def m(c):
        c["models"]["vit"]["arch"] = "vit_tinny_patch16_224"
    msg = bad(m)
    assert "models.vit.arch" in msg and "unknown timm architecture 'vit_tinny_patch16_224'" in msg
    assert "vit_tiny_patch16_224" in msg  # suggestion


def test_unknown_pretrained_tag():
    def m(c):
        c["models"]["vit"] = {"source": {"kind": "timm_hub", "timm_name": "vit_base_patch32_224.no_such_tag"}}
    msg = bad(m)
    assert "models.vit.source.timm_name" in msg and "unknown pretrained tag 'no_such_tag'" in msg


def test_missing_image_folder(tmp_path):
    def m(c):
        c["datasets"]["val"] = {"kind": "imagefolder", "root": str(tmp_path / "nowhere")}
    msg = bad(m)
    assert "datasets.val.root" in msg and "does not exist" in msg and "nowhere" in msg


def test_wrong_type():
    def m(c):
        c["models"]["vit"]["recipe"]["epochs"] = "four"
    msg = bad(m)
    assert "models.vit.recipe.epochs" in msg and "'four'" in msg and "number" in msg


def test_minibatch_too_small_for_unbiased():
    def m(c):
        c["cka"]["minibatch_size"] = 3
        c["analysis"]["n_examples"] = 9
    msg = bad(m)
    assert "cka.minibatch_size" in msg and "at least 4" in msg


def test_minibatch_too_small_for_the_plan_with_the_biased_estimator():
    """The biased estimator works from b = 2, but the plan (shared with the unbiased one) does not:
    a config accepted here must not fail later at the plan step."""
    def m(c):
        c["cka"]["estimator"] = "biased"
        c["cka"]["minibatch_size"] = 2
        c["analysis"]["n_examples"] = 8
    msg = bad(m)
    assert "cka.minibatch_size" in msg and "at least 4" in msg


def test_n_examples_not_multiple_of_minibatch():
    def m(c):
        c["analysis"]["n_examples"] = 500
    msg = bad(m)
    assert "analysis.n_examples" in msg and "448" in msg and "512" in msg


def test_unknown_key_suggests():
    def m(c):
        c["cka"]["estimater"] = "biased"
    msg = bad(m)
    assert "cka" in msg and "'estimater'" in msg and "did you mean 'estimator'" in msg


def test_bad_enum():
    def m(c):
        c["cka"]["estimator"] = "rbf"
    msg = bad(m)
    assert "cka.estimator" in msg and "'rbf'" in msg


def test_unknown_model_in_pairs():
    def m(c):
        c["cka"]["pairs"] = [["vit", "convnet"]]
    msg = bad(m)
    assert "cka.pairs[0]" in msg and "convnet" in msg


def test_recipe_on_unknown_dataset():
    def m(c):
        c["models"]["vit"]["recipe"]["dataset"] = "cifar"
    msg = bad(m)
    assert "models.vit.recipe.dataset" in msg and "cifar" in msg


def test_too_many_examples():
    def m(c):
        c["analysis"]["n_examples"] = 4096
    msg = bad(m)
    assert "analysis.n_examples" in msg and "4096" in msg


def test_local_weights_file_missing(tmp_path):
    def m(c):
        c["models"]["vit"] = {"arch": "vit_tiny_patch16_224", "source": {"kind": "local_file", "path": str(tmp_path / "w.safetensors")}}
    msg = bad(m)
    assert "models.vit.source.path" in msg and "w.safetensors" in msg


def test_step_executor_overrides():
    cfg = demo()
    cfg["executor"] = {"default": "slurm", "resources": {"partition": "gpu", "time_min": 30},
                       "steps": {"extract": {"resources": {"gpus": 1, "time_min": 120}}, "cka": {"executor": "inline"}}}
    cfg = sc.load(cfg)
    ex = sc.step_executor(cfg, "extract")
    assert ex["executor"] == "slurm" and ex["resources"] == {"partition": "gpu", "time_min": 120, "gpus": 1}
    assert sc.step_executor(cfg, "cka")["executor"] == "inline"


def test_every_schema_key_is_documented():
    """config/README.md names every key the schema accepts (in backticks, alone or in a dotted path)."""
    import re

    schema = sc.load_schema()
    doc = (Path(__file__).resolve().parents[1] / "config" / "README.md").read_text()
    quoted = " ".join(re.findall(r"`([^`]+)`", doc))
    keys = set()

    def walk(node, path):
        if not isinstance(node, dict):
            return
        for k, v in (node.get("properties") or {}).items():
            keys.add((k, ".".join(path + [k])))
            walk(v, path + [k])
        for k in ("additionalProperties", "items", "then"):
            walk(node.get(k), path + (["<name>"] if k == "additionalProperties" else []))
        for k in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(k) or []:
                walk(sub, path)

    walk(schema, [])
    missing = sorted(path for k, path in keys if not re.search(rf"(^|[\s.`,{{]){re.escape(k)}($|[\s.`,}}=<:])", quoted))
    assert not missing, f"config/README.md does not document: {missing}"
