"""benchmarks/gpu_check.py --smoke: every section of the GPU check runs its code path on CPU and reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check_smoke.json"
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), os.environ.get("PYTHONPATH", "")]))
    # a generous budget: the test checks what each section reports, not how fast a busy machine is
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--budget-s", "400",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    meta, res = report["meta"], report["results"]
    assert meta["smoke"] is True and meta["device"] == "cpu" and meta["complete"] is True
    ran = ("setup", "extract", "grams", "loading", "workflow", "fp16")
    assert {s: res[s]["status"] for s in ran} == dict.fromkeys(ran, "ok"), {s: res[s] for s in res if res[s]["status"] != "ok"}
    # GPU memory cannot be measured on CPU: skipped, saying why
    assert res["memory"]["status"] == "skipped" and "CUDA" in res["memory"]["reason"]

    rows = res["extract"]["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {(m, p) for m in ("vit_b16", "r50x1", "mixer_b16")
                                                          for p in ("bf16", "fp32")}
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert r["bare_s"] > 0 and r["shard0_s"] > 0 and r["shard1_s"] > 0 and r["shard1_file_bytes"] > 0, r
        assert 0 < r["shard1_write_s"] < r["shard1_s"] and r["write_pct_of_bare"] > 0, r
        assert r["formula_bytes"] > r["params_bytes"] > 0, r
        # the workflow's own taps were attached: the paper config's analyses for the model's family
        assert {"localization", "norm_ratio"} <= set(r["taps"]), r["taps"]
        assert r["vision_shard1_s"] > 0 and r["shard1_tf32_s"] > 0, r
        if r["model"] == "vit_b16":
            assert {"attention_distance", "attention_maps", "heads"} <= set(r["taps"]), r["taps"]

    grams = res["grams"]["rows"]
    assert {g["mode"] for g in grams} == {"highest", "tf32", "medium", "bf16"}
    for g in grams:
        assert g["gram_s"] > 0 and 0 <= g["max_abs_cka_error"] < 1e-3, g
        if g["mode"] == "highest":   # seelike's own Grams agree with float64 Grams
            assert g["max_abs_cka_error"] < 1e-5, g

    ld = res["loading"]
    assert ld["decode_img_s_per_worker"] > 0 and ld["loader_img_s"] > 0 and ld["workers"] >= 1

    wf = res["workflow"]
    assert wf["device"] == "cpu" and wf["missing_targets"] == [] and wf["ok"] is True
    assert 0 < wf["state_saved_at_step"] < wf["train_steps"] and wf["resumed_from_saved_state"] is True
    assert wf["weights_identical"] is True, wf["weights_max_abs_diff_vs_uninterrupted"]
    # fp16 on a CPU is bf16 autocast without a GradScaler: the resumed state holds no loss scale
    fp = res["fp16"]
    assert fp["ok"] is True and fp["resumed_from_saved_state"] is True, fp
    assert 0 < fp["state_saved_at_step"] < fp["train_steps"] and fp["scaler_saved"] is False is fp["scaler_expected"]
    assert 0 <= fp["test_accuracy"] <= 1
    assert "extract" in proc.stdout and "workflow (status ok)" in proc.stdout   # the printed table
    assert "fp16 (status ok)" in proc.stdout


def test_the_gpu_workflow_runs_every_vision_tap_of_the_demo_on_its_models():
    """The GPU run's workflow config (not --smoke) is a valid config whose analyses put every vision tap,
    receptive fields' gradients and attention maps among them, on the device."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check
    from seelike import config as sc, specs

    raw = gpu_check.workflow_config(False, "cpu")
    cfg = sc.load(raw, check_timm=False)
    assert set(raw["models"]) == {"vit", "resnet", "mixer"}
    wanted = {"attention_distance", "head_cka", "receptive_field", "norm_ratio", "localization", "attention_maps",
              "snn_loss"}
    assert wanted <= set(raw["analyses"]), sorted(raw["analyses"])
    for name, settings in raw["analyses"].items():
        assert set(settings.get("models", [])) <= set(raw["models"]), (name, settings)
    assert raw["analyses"]["attention_distance"]["less_data"] == []
    # the vision passes' specs carry those taps: receptive fields on the ViT and the CNN, attention maps on the ViT
    taps = {m: specs.vision_extract_spec(cfg, m)["taps"] for m in ("vit", "resnet")}
    assert {"receptive_field", "attention_maps", "localization", "heads"} <= set(taps["vit"]), taps["vit"]
    assert {"receptive_field", "localization"} <= set(taps["resnet"]), taps["resnet"]


def test_gpu_node_carries_the_locks_pins_of_what_a_gpu_image_lacks():
    """benchmarks/gpu_node.sh takes each carried package's version from envs/requirements.txt: every one
    is pinned there, the workflow's own packages are among them, and nothing built for a CUDA version
    (the GPU node's own torch stack) is."""
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_node.sh"), "pins"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pins = dict(line.split("==") for line in proc.stdout.split())
    lock = {}
    for line in (ROOT / "envs" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name] = version
    assert pins and all(lock.get(name) == version for name, version in pins.items()), pins
    names = {n.lower().replace("_", "-") for n in pins}
    assert {"snakemake", "submitit", "jsonschema", "timm"} <= names
    assert not {n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia-")}
