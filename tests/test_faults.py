"""Faults that lose nothing: each test checks the outcome, not just that something was raised."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import snakemake, write_config
from seelike.cka_tables import PlanMismatch, cka_table
from seelike.manifest import load_manifest, reusable
from seelike.plan import Plan
from seelike.store import ShardError, layer_path, validate_shard, write_shard
from test_workflow import planned_jobs

PLAN = {"version": 1, "dataset": "synth:abc", "n_examples": 8, "minibatch_size": 4, "minibatches_per_shard": 2,
        "seed": 0, "indices": list(range(8))}


def small_shard(path, plan=PLAN, big=0):
    """Shard 0 of ``plan`` (minibatches of 4)."""
    rng = np.random.default_rng(0)
    p = Plan.from_dict(plan)
    sp = p.shard(0)
    n, m = sp.n_examples, len(sp.minibatches)
    arrays = {layer_path("block0", "gram"): np.stack([np.eye(4)] * m) + 0.1,
              "labels": np.arange(n), "logits": rng.normal(size=(n, 3)).astype(np.float32)}
    if big:
        arrays[layer_path("block0", "tokens")] = rng.normal(size=(big, 1024, 64)).astype(np.float32)
    write_shard(path, model="m", dataset="synth", shard_index=0, n_shards=p.n_shards, plan=plan, plan_digest=p.digest(),
                layers=["block0"], example_indices=sp.example_indices, minibatch_ids=sp.minibatch_ids,
                arrays=arrays, provenance={"config_hash": "h", "inputs": {"w": "sha", "card.json": "card"}})


def test_sigkill_mid_write_leaves_nothing_acceptable(tmp_path):
    target = tmp_path / "shard-00000.h5"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_faults import small_shard; "
            f"from pathlib import Path; small_shard(Path({str(target)!r}), big=600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".shard-00000.*.tmp.h5")) and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # while ~150 MB are being written and fsynced
    proc.wait()
    leftovers = list(tmp_path.glob(".shard-00000.*.tmp.h5"))
    assert leftovers, "the write finished before the kill; make it bigger"
    assert not target.exists()
    with pytest.raises(ShardError):
        validate_shard(target)
    assert not reusable(target, 0, PLAN, "h", "sha", "card")
    # The rerun of that step writes the shard and clears the dead writer's temporary.
    small_shard(target)
    validate_shard(target, expected_plan=PLAN)
    assert not list(tmp_path.glob(".shard-00000.*.tmp.h5"))


def test_reuse_needs_the_same_card_checkpoint_settings_and_shard(tmp_path, capsys):
    """A rerun reuses a shard only if nothing it was made from changed: a new card with the same
    weights (other layers or preprocessing) redoes it, as does a file holding another shard."""
    target = tmp_path / "shard-00000.h5"
    small_shard(target)
    assert reusable(target, 0, PLAN, "h", "sha", "card")
    assert not reusable(target, 0, PLAN, "h", "sha", "card-with-other-layers")
    assert not reusable(target, 0, PLAN, "h", "other-weights", "card")
    assert not reusable(target, 0, PLAN, "other-settings", "sha", "card")
    assert "made from other inputs or settings" in capsys.readouterr().out
    two = dict(PLAN, minibatches_per_shard=1)
    small_shard(target, plan=two)                     # shard 0 of a 2-shard plan, asked for as shard 1
    assert not reusable(target, 1, two, "h", "sha", "card")
    assert "holds shard 0, expected shard 1" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs to fill needs root")
def test_full_disk_leaves_earlier_results_intact(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        target = disk / "shard-00000.h5"
        small_shard(target)
        before = target.read_bytes()
        with pytest.raises(OSError) as e:
            small_shard(target, big=64)  # ~16 MB of tokens into a 2 MB filesystem: ENOSPC
        assert "No space left" in str(e.value) or getattr(e.value, "errno", None) == 28
        assert target.read_bytes() == before
        validate_shard(target, expected_plan=PLAN)
        assert [p.name for p in disk.iterdir()] == ["shard-00000.h5"]
    finally:
        # umount is refused while anything still holds the mount (seen after whole-suite runs);
        # a lazy umount detaches it anyway, so no tmpfs outlives the run and blocks removing
        # pytest's temporary folders
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_shards_of_different_plans_are_never_combined(tmp_path):
    for name, plan in (("a", PLAN), ("b", dict(PLAN, minibatch_size=8, minibatches_per_shard=1))):
        d = tmp_path / name
        small_shard(d / "shard-00000.h5", plan=plan)
        from seelike.fileio import sha256_file
        (d / "manifest.json").write_text(json.dumps({
            "model": name, "plan": plan, "layers": ["block0"],
            "shards": [{"file": "shard-00000.h5", "sha256": sha256_file(d / "shard-00000.h5")}]}))
    with pytest.raises(PlanMismatch) as e:
        cka_table(load_manifest(tmp_path / "a" / "manifest.json"), load_manifest(tmp_path / "b" / "manifest.json"), "unbiased")
    assert "'a' and 'b'" in str(e.value) and "minibatch_size" in str(e.value) and "minibatches_per_shard" in str(e.value)


def test_jobs_left_running_are_adopted_only_for_the_same_work(tmp_path, capsys):
    """Snakemake killed while SLURM jobs run, config changed, rerun: the job record beside the output
    must not hand the old config's jobs (and their shards) to the new request; the same request re-attaches."""
    from seelike.submit import _reattach, _record_path, _recorded_jobs_for, _write_record

    target = "seelike.extract:extract_shard"
    settings = {"executor": "slurm", "step": "extract"}
    marker = tmp_path / "extract" / "vit" / "manifest.json"
    marker.parent.mkdir(parents=True)

    def tasks(plan, shards):
        spec = {"model": "vit", "plan": plan, "out": str(marker.parent / "shard-{shard:05d}.h5")}
        return [{"spec": spec, "shard_index": s} for s in shards]

    ids = ["999991_0", "999991_1", "999991_2"]
    _write_record(marker, settings, tmp_path / "jobs" / "%j", ids, target, tasks(PLAN, [0, 1, 2]))

    def recorded():
        return json.loads(_record_path(marker).read_text())

    # The next run rebuilds the same request (other key order, a tuple where JSON has a list): re-attach.
    same = [{"shard_index": s, "spec": {"out": str(marker.parent / "shard-{shard:05d}.h5"),
                                        "plan": dict(reversed(list(PLAN.items())), indices=tuple(PLAN["indices"])),
                                        "model": "vit"}} for s in (0, 1, 2)]
    assert _recorded_jobs_for(recorded(), target, same) == ids
    # Shards finished meanwhile are not asked for again; the rest are still the recorded jobs' tasks.
    assert _recorded_jobs_for(recorded(), target, tasks(PLAN, [2, 0])) == ["999991_2", "999991_0"]
    # Other work is never adopted: a changed plan, a task the jobs do not run, another function.
    changed = dict(PLAN, minibatch_size=8, minibatches_per_shard=1)
    assert _recorded_jobs_for(recorded(), target, tasks(changed, [0, 1, 2])) is None
    assert _recorded_jobs_for(recorded(), target, tasks(changed, [0])) is None
    assert _recorded_jobs_for(recorded(), target, tasks(PLAN, [0, 1, 2, 3])) is None
    assert _recorded_jobs_for(recorded(), "seelike.extract:other", tasks(PLAN, [0, 1, 2])) is None
    # The whole path: the changed request is refused, whatever state SLURM reports for those ids, and said so.
    assert _reattach(marker, settings, target, tasks(changed, [0, 1, 2])) is None
    out = capsys.readouterr().out
    assert "not re-attaching to SLURM job(s) 999991_0, 999991_1, 999991_2" in out and "different work" in out
    assert _record_path(marker).is_file()   # left for the user; the new submission's record replaces it

    # A record from before records said what their jobs compute is never adopted either.
    legacy = {k: v for k, v in recorded().items() if k in ("executor", "step", "folder", "job_ids", "submitted")}
    _record_path(marker).write_text(json.dumps(legacy))
    assert _recorded_jobs_for(recorded(), target, tasks(PLAN, [0, 1, 2])) is None
    assert _reattach(marker, settings, target, tasks(PLAN, [0, 1, 2])) is None
    assert "older seelike" in capsys.readouterr().out


def test_nan_activations_reject_the_shard_naming_layer_and_example(tiny_local_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from seelike.extract import NonFiniteActivation, extract_shard
    from seelike.fileio import sha256_file

    run = tiny_local_run[0] / "results"
    model_dir = tmp_path / "vit"
    shutil.copytree(run / "models" / "vit", model_dir)
    weights = load_file(model_dir / "weights.safetensors")
    weights["blocks.1.mlp.fc2.bias"][0] = float("inf")  # block 1 overflows for every example
    save_file(weights, model_dir / "weights.safetensors")
    card = json.loads((model_dir / "card.json").read_text())
    card["sha256"] = sha256_file(model_dir / "weights.safetensors")
    (model_dir / "card.json").write_text(json.dumps(card))
    cfg = yaml.safe_load((tiny_local_run[1]).read_text())
    plan = json.loads((run / "plans" / "synth.json").read_text())
    spec = {"model": "vit", "card": str(model_dir / "card.json"), "dataset_key": "synth",
            "dataset": cfg["datasets"]["synth"], "split": "analysis", "plan": plan, "out": str(tmp_path / "s-{shard}.h5"),
            "device": "cpu", "precision": "fp32", "sublayers": False, "full_tokens": 0}
    with pytest.raises(NonFiniteActivation) as e:
        extract_shard(spec, 1)
    first = plan["indices"][plan["minibatch_size"] * plan["minibatches_per_shard"]]  # shard 1's first example
    assert "layer 'block1'" in str(e.value) and f"dataset index {first}" in str(e.value)
    assert not list(tmp_path.glob("s-*.h5")) and not list(tmp_path.glob(".s-*"))


@pytest.mark.parametrize("damage", ["weights", "weights_and_nan", "missing"])
def test_a_checkpoint_changed_under_its_card_writes_no_shard(tiny_local_run, tmp_path, damage):
    """The extraction job hashes the checkpoint while the model runs and checks it before writing: a file
    changed after the card (and after the submitting host's check) gives no shard, and the checksum, the
    likelier cause, is what is reported even when the run itself fails on the bad weights."""
    from safetensors.torch import load_file, save_file

    from seelike.extract import extract_shard
    from seelike.models import ChecksumError, WeightsFileError

    run = tiny_local_run[0] / "results"
    model_dir = tmp_path / "vit"
    shutil.copytree(run / "models" / "vit", model_dir)
    ckpt = model_dir / "weights.safetensors"
    if damage == "missing":
        ckpt.unlink()
    else:
        weights = load_file(ckpt)
        weights["blocks.1.mlp.fc2.bias"][0] = float("inf") if damage == "weights_and_nan" else 0.125
        save_file(weights, ckpt)                       # the card still names the old sha256
    cfg = yaml.safe_load((tiny_local_run[1]).read_text())
    plan = json.loads((run / "plans" / "synth.json").read_text())
    spec = {"model": "vit", "card": str(model_dir / "card.json"), "dataset_key": "synth",
            "dataset": cfg["datasets"]["synth"], "split": "analysis", "plan": plan, "out": str(tmp_path / "s-{shard}.h5"),
            "device": "cpu", "precision": "fp32", "sublayers": False, "full_tokens": 0}
    expected = (WeightsFileError, "does not exist") if damage == "missing" else (ChecksumError, "does not match its recorded sha256")
    with pytest.raises(expected[0], match=expected[1]):
        extract_shard(spec, 0)
    assert not list(tmp_path.glob("s-*.h5")) and not list(tmp_path.glob(".s-*"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_damaged_shard_is_detected_named_and_rebuilt(tiny_local_run, tmp_path, damage):
    src, cfgfile = tiny_local_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("locks", "incomplete"))
    shard = run / "results" / "extract" / "synth" / "resnet" / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x10  # one bit, in the middle of the data
        shard.write_bytes(bytes(data))
    # One reader of the shard runs again: the CKA table of the ResNet with itself, asked for by name.
    table = run / "results" / "cka" / "synth" / "resnet__resnet.csv"
    table.unlink()
    target = str(table.relative_to(run))
    proc = snakemake(run, cfgfile, "--cores", "2", target, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "shard-00001.h5" in out and "run the workflow again to re-extract it" in out, out[-3000:]
    assert not shard.exists()
    # Next run: only that shard is extracted again, then the table completes.
    snakemake(run, cfgfile, "--cores", "2", target)
    assert table.is_file()
    log = (run / "results" / "logs" / "extract" / "synth" / "resnet.log").read_text()
    assert "extracting 1 of 2 shard(s) of 'resnet'" in log
    validate_shard(shard)


@pytest.mark.slow
def test_checkpoint_that_does_not_match_its_card_is_rebuilt(tiny_local_run, tmp_path):
    src, cfgfile = tiny_local_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("locks", "incomplete"))
    weights = run / "results" / "models" / "mixer" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    manifest = run / "results" / "extract" / "synth" / "mixer" / "manifest.json"
    manifest.unlink()
    # Ask for the extraction itself: with the figures present, Snakemake would not rebuild it.
    proc = snakemake(run, cfgfile, "--cores", "2", str(manifest.relative_to(run)), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "weights.safetensors" in out and "run the workflow again to rebuild the model" in out
    assert not weights.exists()
    again = planned_jobs(snakemake(run, cfgfile, "-n", str(manifest.relative_to(run)), "--quiet", "rules"))
    assert again == {"model": 1, "extract": 1}  # the next run that needs the model rebuilds it first
    snakemake(run, cfgfile, "--cores", "2", str(manifest.relative_to(run)))
    assert weights.is_file() and manifest.is_file()


def test_weights_file_cut_short_is_named(tiny_local_run, tmp_path):
    from seelike.models import WeightsFileError, import_local_weights

    src = tiny_local_run[0] / "results" / "models" / "vit"
    cut = tmp_path / "vit_cut.safetensors"
    full = (src / "weights.safetensors").read_bytes()
    cut.write_bytes(full[: len(full) * 2 // 3])
    card = json.loads((src / "card.json").read_text())
    with pytest.raises(WeightsFileError) as e:
        import_local_weights("vitcut", card["arch"], card["kwargs"], cut, tmp_path / "out")
    assert str(cut) in str(e.value)
    assert not (tmp_path / "out" / "card.json").exists()


def image_folder(root: Path, n_per_class: int = 4) -> Path:
    """An ImageNet-style folder of synthetic 16 px scenes, plus the awkward files of real folders."""
    from PIL import Image

    from seelike.data import render
    from seelike.data.synthetic import SyntheticSpec

    spec = SyntheticSpec(n_classes=10, image_size=16, seed=7, splits={"train": 0, "test": 0, "analysis": 40})
    images, labels, _ = render(spec, np.arange(10 * n_per_class))
    for i, (img, label) in enumerate(zip(images, labels)):
        d = root / f"c{label:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:03d}.png")
    Image.fromarray(images[0]).convert("L").save(root / "c00" / "gray.png")
    Image.fromarray(images[1]).convert("CMYK").save(root / "c01" / "cmyk.jpg")
    Image.fromarray(images[2]).convert("RGBA").save(root / "c02" / "alpha.png")
    (root / "c10_empty").mkdir()
    (root / "c03" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a jpeg")
    (root / "c04" / "README.txt").write_text("not an image")
    return root


@pytest.mark.slow
def test_image_folder_with_bad_files(tiny_local_run, tmp_path):
    src, cfgfile = tiny_local_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("locks", "incomplete"))
    folder = image_folder(tmp_path / "val")
    cfg = yaml.safe_load(cfgfile.read_text())
    cfg["datasets"]["val"] = {"kind": "imagefolder", "root": str(folder)}
    cfg["analysis"] = {"dataset": "val", "n_examples": 32, "seed": 0}
    edited = write_config(run / "val.yaml", cfg)
    # Default: the non-image file fails the step, named by path.
    proc = snakemake(run, edited, "--cores", "2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and str(folder / "c04" / "README.txt") in out, out[-3000:]
    (folder / "c04" / "README.txt").unlink()
    # Then the corrupt JPEG fails whichever step decodes it first, named by path.
    proc = snakemake(run, edited, "--cores", "2", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "broken.JPEG" in out, out[-3000:]
    # With the switch on, bad files are skipped and listed; grayscale, CMYK and alpha images are used.
    (folder / "c04" / "README.txt").write_text("not an image")
    cfg["datasets"]["val"]["on_bad_file"] = "skip"
    edited = write_config(run / "val.yaml", cfg)
    jobs = planned_jobs(snakemake(run, edited, "-n", "--quiet", "rules"))
    assert "model" not in jobs and jobs["plan"] == 1 and jobs["extract"] == 3
    # the plan and the three extractions (what reads the folder); the tables and figures after them do not
    snakemake(run, edited, "--cores", "2", *(f"results/extract/val/{m}/manifest.json" for m in ("vit", "resnet", "mixer")))
    plan_log = (run / "results" / "logs" / "plans" / "val.log").read_text()
    assert "broken.JPEG" in plan_log and "README.txt" in plan_log
    meta = json.loads((run / "results" / "plans" / "val.json").read_text())
    assert meta["n_examples"] == 32
    # The plan step decoded the folder; the plan names what it left out, and the extraction jobs take
    # that list instead of decoding every image again.
    assert meta["excluded"] == ["c03/broken.JPEG", "c04/README.txt"]
    extract_logs = list((run / "results" / "logs" / "extract" / "val").glob("*.log"))
    assert len(extract_logs) == 3 and not any("unreadable" in p.read_text() for p in extract_logs)
    # An image added after planning would move the plan's indices: a job that reads the folder refuses it.
    shutil.copy(folder / "c00" / "gray.png", folder / "c00" / "added.png")
    manifest = sorted((run / "results" / "extract" / "val").glob("*/manifest.json"))[0]
    manifest.unlink()
    for shard in manifest.parent.glob("shard-*.h5"):   # else the rerun reuses them and reads no image
        shard.unlink()
    proc = snakemake(run, edited, "--cores", "2", str(manifest.relative_to(run)), check=False)
    out = proc.stdout + proc.stderr + (run / "results" / "logs" / "extract" / "val" / f"{manifest.parent.name}.log").read_text()
    assert proc.returncode != 0 and f"image folder {folder} no longer matches the example plan of dataset 'val'" in out
    (folder / "c00" / "added.png").unlink()
    # A different image folder (same images, new place) reruns the plan and everything after it.
    shutil.copytree(folder, tmp_path / "val2")
    cfg["datasets"]["val"]["root"] = str(tmp_path / "val2")
    jobs = planned_jobs(snakemake(run, write_config(run / "val.yaml", cfg), "-n", "--quiet", "rules"))
    assert jobs == {"plan": 1, "extract": 3, "cka": 6, "figure_f1": 3, "figure_f2": 3, "figure_f14": 1,
                    "table_findings": 1, "all": 1}


def test_non_finite_gram_that_passes_its_checksum_names_shard_layer_and_minibatch(tmp_path):
    """A Gram written non-finite (its manifest sha256 taken of those very bytes) reaches the CKA step: the
    error names the shard file, the layer and the minibatch, and removes the shard and its manifest."""
    import h5py

    from seelike.cka_tables import minibatch_hsic
    from seelike.fileio import sha256_file
    from seelike.manifest import load_manifest, write_manifest

    out = tmp_path / "extract" / "m"
    out.mkdir(parents=True)
    shard = out / "shard-00000.h5"
    small_shard(shard)
    write_manifest(out / "manifest.json", model="m", dataset="synth", plan=PLAN,
                   plan_digest=Plan.from_dict(PLAN).digest(), shard_files=[shard], provenance={})
    with h5py.File(shard, "r+") as f:
        gram = f[layer_path("block0", "gram")]
        values = gram[()]
        values[1, 2, :] = values[1, :, 2] = np.nan      # minibatch 1 of the shard, example 2
        gram[...] = values
    doc = json.loads((out / "manifest.json").read_text())
    doc["shards"][0]["sha256"] = sha256_file(shard)
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardError) as err:
        minibatch_hsic([load_manifest(out / "manifest.json")], "unbiased")
    msg = str(err.value)
    assert f"shard '{shard}'" in msg and "layer 'block0'" in msg and "minibatch 1" in msg, msg
    assert not shard.exists() and not (out / "manifest.json").exists()
