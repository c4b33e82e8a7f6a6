"""Every bad config gets one clear message naming the key; both shipped configs validate."""
from pathlib import Path

import pytest
import yaml

from seelike import config as sc

ROOT = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


@pytest.fixture(scope="module")
def paper_folders(tmp_path_factory):
    """Image folders the paper config accepts, of empty files named like images (the config checks
    count by name, never decode): 1000 classes of 11 validation images (analysis.n_examples is 10240),
    and a training folder whose 3% (the smallest train_fraction) fills a batch of 1024."""
    from conftest import write_image_names

    base = tmp_path_factory.mktemp("paper")
    return write_image_names(base / "val", 1000, 11), write_image_names(base / "train", 10, 3500)


def paper(folders):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["datasets"]["imagenet_val"]["root"] = str(folders[0])
    cfg["datasets"]["imagenet_train"]["root"] = str(folders[1])
    return cfg


def test_demo_config_validates_and_fills_defaults():
    cfg = sc.load(demo())
    assert cfg["cka"]["estimator"] == "unbiased"
    assert cfg["executor"]["default"] == "local"
    assert cfg["models"]["vit"]["family"] == "vit"
    assert cfg["models"]["mixer"]["family"] == "mixer"
    assert cfg["models"]["resnet"]["family"] == "cnn"
    from seelike.analyses.cka_maps import cross_pairs

    assert cross_pairs(cfg) == [("vit", "resnet"), ("vit", "mixer"), ("vit", "vit_frac_0p3"), ("resnet", "mixer")]
    # sweeps became models of the registry
    assert {"vit_skip_1", "vit_skip_3", "vit_frac_0p03", "vit_frac_0p3"} <= set(cfg["models"])


def test_paper_config_validates(paper_folders):
    cfg = sc.load(paper(paper_folders))
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

    def g(c):
        c["extraction"]["gram_precision"] = "bf16"   # only fp32 and tf32 keep CKA within 1e-5
    msg = bad(g)
    assert "extraction.gram_precision" in msg and "'bf16'" in msg and "tf32" in msg


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


# --- sweeps: every expanded model is checked like a hand-written one, errors name the sweep ----

def test_sweep_key_typo_names_the_sweep_key():
    """A misspelt sweep key is named as written, instead of adding an unknown key to every expanded
    model (F12's models would then train on all the data)."""
    def m(c):
        c["models"]["vit_frac"]["sweep"]["key"] = "recipe.train_fractoin"
    msg = bad(m)
    assert msg.startswith("config key models.vit_frac.sweep.key: 'recipe.train_fractoin' is not a key of a model")
    assert "did you mean 'recipe.train_fraction'" in msg


def test_sweep_key_typo_below_a_created_mapping():
    def m(c):
        c["models"]["vit_skip"]["sweep"]["key"] = "recipe.remove_skip.blok"
    msg = bad(m)
    assert msg.startswith("config key models.vit_skip.sweep.key: 'recipe.remove_skip.blok'")
    assert "did you mean 'recipe.remove_skip.block'" in msg


@pytest.mark.parametrize("key, values, index, words", [
    ("recipe.lr", [0.001, -0.5], 1, "-0.5 is less than or equal to the minimum of 0"),
    ("recipe.epochs", [5, "ten"], 1, "'ten' is not of type number"),
    ("recipe.train_fraction", [0.1, 3.0], 1, "3.0 is greater than the maximum of 1"),
    ("recipe.train_fraction", [0.1, "thirty"], 1, "'thirty' is not of type number"),
])
def test_bad_sweep_values_name_the_value(key, values, index, words):
    def m(c):
        c["models"]["vit_frac"]["sweep"] = {"key": key, "values": values}
    msg = bad(m)
    assert msg.startswith(f"config key models.vit_frac.sweep.values[{index}]: {words}"), msg
    assert key in msg and "\n" not in msg


def test_sweep_value_that_breaks_the_model_is_a_schema_error_not_a_crash():
    """Sweeping source.kind to timm_hub is a schema error naming the sweep value, not a KeyError 'timm_name'."""
    def m(c):
        c["models"]["vit_frac"]["sweep"] = {"key": "source.kind", "values": ["timm_hub"]}
    msg = bad(m)
    assert msg.startswith("config key models.vit_frac.sweep.values[0]: with source.kind = 'timm_hub'")
    assert "source.timm_name: required" in msg


def test_sweep_over_a_free_form_key_and_created_mapping_defaults():
    cfg = demo()
    cfg["models"]["vit_depth"] = {**cfg["models"]["vit"], "sweep": {"key": "kwargs.depth", "values": [4, 6]}}
    del cfg["models"]["vit_skip"]["recipe"]["remove_skip"]          # the sweep creates it: defaults filled
    cfg = sc.load(cfg, check_timm=False)
    assert cfg["models"]["vit_depth_4"]["kwargs"]["depth"] == 4
    assert cfg["models"]["vit_skip_1"]["recipe"]["remove_skip"] == {"block": 1, "branch": "both"}


# --- datasets, seeds -------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["synth", "synth_small"])   # the analysis dataset, a training-only one
def test_synthetic_splits_are_required(dataset):
    def m(c):
        if dataset == "synth_small":
            c["datasets"]["synth_small"] = {"kind": "synthetic", "n_classes": 10, "image_size": 32, "seed": 0}
            c["models"]["vit_gap"]["recipe"]["dataset"] = "synth_small"
            return
        del c["datasets"][dataset]["splits"]
    assert bad(m) == f"config key datasets.{dataset}.splits: required, but not given"


@pytest.mark.parametrize("where", [("datasets", "synth", "seed"), ("models", "vit", "recipe", "seed"),
                                   ("models", "vit", "recipe", "subset_seed"), ("analysis", "seed")])
def test_negative_seeds(where):
    def m(c):
        node = c
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = -1
    assert bad(m) == f"config key {'.'.join(where)}: -1 is less than the minimum of 0"


# --- config files: empty, duplicate keys -------------------------------------------------------

def test_empty_config_file_is_an_error_not_the_demo(tmp_path):
    from conftest import snakemake

    cfgfile = tmp_path / "empty.yaml"
    cfgfile.write_text("{}\n")
    proc = snakemake(tmp_path / "wd", cfgfile, "-n", "--cores", "1", check=False, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"seelike: config file '{cfgfile}' holds no keys" in out
    assert "Traceback" not in out and not (tmp_path / "wd" / "results").exists()


DUPLICATE_CKA = """
datasets: {synth: {kind: synthetic, splits: {train: 8, test: 8, analysis: 8}}}
cka:
  minibatch_size: 4
models:
  vit: {source: {kind: recipe}}
cka:
  estimator: biased
"""


def test_duplicate_keys_are_named_with_their_line(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text(DUPLICATE_CKA)
    with pytest.raises(sc.ConfigError) as e:
        sc.check_duplicate_keys(f)
    assert str(e.value).startswith(f"config file '{f}' line 7, column 1: duplicate key 'cka' (first given at "
                                   "line 3, column 1)")
    text = (ROOT / "config" / "demo.yaml").read_text()
    f.write_text(text.replace("  resnet:\n", "  vit:\n    source: {kind: recipe}\n  resnet:\n", 1))
    with pytest.raises(sc.ConfigError, match=r"duplicate key 'models\.vit'"):
        sc.load_file(f, check_timm=False)


def test_merge_keys_are_not_duplicates():
    """config.yaml overrides keys it merges in with `<<: *vitb32_recipe`: overrides, not duplicates."""
    for name in ("config.yaml", "demo.yaml"):
        sc.check_duplicate_keys(ROOT / "config" / name)


# --- cross-section checks ----------------------------------------------------------------------

@pytest.mark.parametrize("mutate, role, words", [
    (lambda c: c["analyses"].pop("localization"), "cls", "there is no analyses.localization section"),
    (lambda c: c["analyses"]["localization"].update(enabled=False), "cls", "switched off"),
    (lambda c: c["analyses"]["localization"].update(models=["vit", "resnet"]), "gap", "does not list it"),
])
def test_gap_vs_cls_needs_localization_of_both(mutate, role, words):
    msg = bad(mutate)
    assert msg.startswith(f"config key experiments.gap_vs_cls.{role}: F10 compares the localization maps") and words in msg


def test_init_from_cycle_names_the_models():
    def m(c):
        c["models"]["vit"]["recipe"]["init_from"] = "vit_gap"
        c["models"]["vit_gap"]["recipe"]["init_from"] = "vit"
    msg = bad(m)
    assert msg.startswith("config key models.vit.recipe.init_from: models vit -> vit_gap -> vit")


def test_n_examples_below_one_minibatch_suggests_one_size():
    def m(c):
        c["analysis"]["n_examples"] = 4
    assert bad(m).endswith("is not a multiple of cka.minibatch_size (64); use 64")


def test_fetch_is_not_a_step():
    def m(c):
        c["executor"].setdefault("steps", {})["fetch"] = {"executor": "inline"}
    msg = bad(m)
    assert msg.startswith("config key executor.steps.fetch: there is no fetch step")
    assert "fetch" not in sc.STEPS and sc.step_executor(sc.load(demo(), check_timm=False), "probe")["step"] == "probe"


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c["extraction"].update(full_tokens=16), "extraction.full_tokens is 16"),
    (lambda c: c["extraction"].pop("full_tokens"), "extraction.full_tokens is 16"),   # the default
])
def test_token_probes_need_stored_tokens(mutate, words):
    msg = bad(mutate)
    assert msg.startswith("config key experiments.probes.tokens: per-token probes (F11)") and words in msg
    # switching the token probes off is the other way out
    cfg = demo()
    mutate(cfg)
    cfg["experiments"]["probes"]["tokens"] = False
    sc.load(cfg, check_timm=False)


def test_invalid_layer_regex_is_named_before_the_run():
    def m(c):
        c["models"]["resnet"]["layers"] = {"regex": "layer[1-4"}
    msg = bad(m)
    assert msg.startswith("config key models.resnet.layers.regex: 'layer[1-4' is not a valid regular expression")


def test_k_shot_probes_need_k_training_examples_of_every_class(paper_folders):
    def m(c):
        c["analysis"]["n_examples"] = 64          # 48 fit the probes: 10 classes x 10 shots do not fit
    msg = bad(m)
    assert msg.startswith("config key experiments.probes.k_shot: 10-shot probes need 10 training examples of each "
                          "of the 10 classes, but the probes fit on 48 examples")
    cfg = demo()
    m(cfg)
    cfg["experiments"]["probes"]["k_shot"] = 0    # switched off
    cfg["experiments"]["probes"]["tokens"] = False
    sc.load(cfg, check_timm=False)
    # an image folder's classes are its sub-folders; the paper config draws no k-shot probes from its
    # ~10 images per ImageNet class
    pc = paper(paper_folders)                     # 1000 class folders
    sc.load(pc, check_timm=False)
    pc["experiments"]["probes"]["k_shot"] = 10
    with pytest.raises(sc.ConfigError, match="10-shot probes need 10 training examples of each of the 1000 classes"):
        sc.load(pc, check_timm=False)
