"""Retraining experiments: recipes and sweeps become ordinary models; F8, F10-F13 from their outputs."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from conftest import snakemake, tiny_config, write_config
from seelike import config as sc


def experiments_config() -> dict:
    cfg = tiny_config()
    vit = cfg["models"]["vit"]
    family = copy.deepcopy(vit)
    family["recipe"]["remove_skip"] = {"branch": "both"}
    family["sweep"] = {"key": "recipe.remove_skip.block", "values": [None, 1]}
    gap = copy.deepcopy(vit)
    gap["kwargs"].update(global_pool="avg", class_token=False)
    frac = copy.deepcopy(vit)
    frac["sweep"] = {"key": "recipe.train_fraction", "values": [0.25, 0.5]}
    cfg["models"] = {"resnet": cfg["models"]["resnet"], "v": family, "v_gap": gap, "v_frac": frac}
    cfg["experiments"] = {"skip_ablation": {"baseline": "v_none", "sweep": "v"},
                          "gap_vs_cls": {"cls": "v_none", "gap": "v_gap"},
                          "data_scale": {"full": "v_none", "sweep": "v_frac"},
                          "probes": {"models": ["v_none", "v_gap", "resnet"], "k_shot": 2}}
    cfg["analyses"] = {"localization": {"models": ["v_none", "v_gap"], "positions": [[0.0, 0.0], [0.5, 0.5]]}}
    cfg["cka"]["pairs"] = [["v_none", "resnet"]]
    cfg["extraction"]["full_tokens"] = 64
    return cfg


def test_sweeps_expand_into_models():
    cfg = sc.load(experiments_config())
    assert [n for n in cfg["models"]] == ["resnet", "v_none", "v_1", "v_gap", "v_frac_0p25", "v_frac_0p5"]
    assert cfg["models"]["v_1"]["recipe"]["remove_skip"] == {"branch": "both", "block": 1}
    assert cfg["models"]["v_none"]["recipe"]["remove_skip"]["block"] is None
    assert cfg["models"]["v_frac_0p25"]["sweep_of"] == {"model": "v_frac", "key": "recipe.train_fraction", "value": 0.25}


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["experiments"]["skip_ablation"].update(baseline="nope"), "experiments.skip_ablation.baseline"),
    (lambda c: c["experiments"]["data_scale"].update(sweep="nothing"), "experiments.data_scale.sweep"),
    (lambda c: c["models"]["v"]["sweep"].update(values=[9]), "models.v_9.recipe.remove_skip.block"),
    (lambda c: c["models"]["v_gap"]["recipe"].update(init_from="ghost"), "models.v_gap.recipe.init_from"),
    (lambda c: c["experiments"]["probes"]["models"].append("ghost"), "experiments.probes.models"),
])
def test_bad_experiment_configs_name_the_key(mutate, key):
    cfg = experiments_config()
    mutate(cfg)
    with pytest.raises(sc.ConfigError, match=key.replace(".", r"\.")):
        sc.load(cfg)


@pytest.mark.slow
def test_experiments_end_to_end(tmp_path):
    cfgfile = write_config(tmp_path / "exp.yaml", experiments_config())
    snakemake(tmp_path, cfgfile, "--cores", "2")
    res = tmp_path / "results"
    cards = {n: json.loads((res / "models" / n / "card.json").read_text()) for n in
             ("v_none", "v_1", "v_gap", "v_frac_0p25", "v_frac_0p5")}
    assert cards["v_1"]["modifications"] == {"remove_skip": {"block": 1, "branch": "both"}}
    assert cards["v_none"]["modifications"] == {}
    assert cards["v_gap"]["num_prefix_tokens"] == 0 and cards["v_none"]["num_prefix_tokens"] == 1
    # stratified fractions of the 512 training images
    from seelike.data import load_split_arrays
    from seelike.data.subsets import stratified_subset

    _, labels = load_split_arrays(experiments_config()["datasets"]["synth"], "train")
    for name, f in (("v_frac_0p25", 0.25), ("v_frac_0p5", 0.5)):
        assert cards[name]["metrics"]["n_train"] == len(stratified_subset(labels, f)) < 512
    skip = pd.read_csv(res / "experiments" / "skip_ablation" / "v_none.csv")
    assert sorted(skip.model) == ["v_1", "v_none"] and skip[skip.baseline].block.tolist() == [-1]
    probes = pd.read_csv(res / "experiments" / "probes" / "v_none.csv")
    assert set(probes.feature) == {"mean", "cls", "token"} and set(probes.kind) == {"full", "k_shot"}
    gap_probes = pd.read_csv(res / "experiments" / "probes" / "v_gap.csv")
    assert "cls" not in set(gap_probes.feature)  # a GAP model has no CLS token to probe
    assert probes.accuracy.between(0, 1).all()
    tokens = probes[probes.feature == "token"]
    assert sorted(tokens.position.unique()) == list(range(17))  # CLS + 16 patches
    for fig in ("F8/v_none", "F10/v_gap", "F11/v_gap", "F11/v_none", "F12/v_none", "F13/all", "F1/v_1"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    f12 = pd.read_csv(res / "cka" / "synth" / "v_none__v_frac_0p25.csv")
    same = f12[f12.index_x == f12.index_y]
    assert len(same) == 2 and same.cka.between(0, 1.0001).all()
