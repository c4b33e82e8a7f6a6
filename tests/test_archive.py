"""Archives: verify against the manifest, name what does not match, redraw identical figures."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from conftest import snakemake
from seelike.archive import MANIFEST, redraw, verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archived(tiny_local_run, tmp_path_factory):
    src, cfgfile = tiny_local_run
    run = tmp_path_factory.mktemp("archived") / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("locks", "incomplete"))
    # What an earlier config left behind (a model since removed): not part of this run's archive.
    res = run / "results"
    for rel in ("figures/F1/gone.png", "figures/F1/gone.png.prov.json", "cka/synth/gone__gone.csv",
                "models/gone/card.json", "extract/synth/gone/manifest.json", "extract/synth/gone/shard-00000.h5",
                "plans/old_data.json"):
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_text("{}")
    snakemake(run, cfgfile, "--cores", "1", "archive")
    tar = run / "results" / "archive" / "tiny.tar.gz"
    out = run / "unpacked"
    with tarfile.open(tar) as t:
        t.extractall(out, filter="data")
    return tar, out / "tiny"


def test_archive_holds_results_and_verifies(archived):
    tar, folder = archived
    assert verify(tar) == [] and verify(folder) == []
    manifest = json.loads((folder / MANIFEST).read_text())
    names = set(manifest["files"])
    for needed in ("results/figures/F1/vit.png", "results/cka/synth/vit__resnet.csv", "results/models/vit/card.json",
                   "results/plans/synth.json", "results/extract/synth/vit/manifest.json", "config.json"):
        assert f"tiny/{needed}" in names, needed
    assert any(n.endswith(".report.html") for n in names)
    assert "tiny/results/models/vit/metrics.csv.prov.json" in names             # every table's provenance
    assert not any("gone" in n or "old_data" in n for n in list(names) + list(manifest["referenced"]))
    # Large files are referenced by checksum, not included (archive.include_large: false).
    assert any(k.endswith(".h5") for k in manifest["referenced"]) and not any(n.endswith(".h5") for n in names)
    assert manifest["provenance"]["git"]["commit"]


def test_verify_names_every_file_that_does_not_match(archived, tmp_path):
    _, folder = archived
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    (copy / "results" / "cka" / "synth" / "vit__resnet.csv").write_text("tampered\n")
    (copy / "results" / "figures" / "F1" / "mixer.png").unlink()
    (copy / "results" / "extra.txt").write_text("not from the run")
    problems = verify(copy)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "vit__resnet.csv: contents differ" in joined and "F1/mixer.png: missing" in joined
    assert "extra.txt: not listed" in joined
    # the same tampering inside a tarball
    bad_tar = tmp_path / "bad.tar.gz"
    with tarfile.open(bad_tar, "w:gz") as t:
        t.add(copy, arcname="tiny")
    assert len(verify(bad_tar)) == 3
    # a manifest cut short: one problem that names it, not a traceback
    (copy / MANIFEST).write_text((copy / MANIFEST).read_text()[:-40])
    problems = verify(copy)
    assert len(problems) == 1 and "unreadable manifest" in problems[0] and "is not valid JSON" in problems[0], problems


def test_redrawn_figures_are_identical(archived, tmp_path):
    _, folder = archived
    drawn = redraw(folder, tmp_path / "redrawn")
    pngs = [p for p in drawn if p.suffix == ".png"]
    assert len(pngs) >= 7  # F1 x3, F2 x3, F14
    for p in drawn:
        original = folder / "results" / p.relative_to(tmp_path / "redrawn")
        assert p.read_bytes() == original.read_bytes(), f"{p.name} differs when redrawn from the archived table"


def test_redraw_works_without_png(archived, tmp_path):
    """A run drawing PDFs only (figures.formats: [pdf]) is redrawn from the PDFs' sidecars."""
    _, folder = archived
    pdf_only = tmp_path / "pdf_only"
    shutil.copytree(folder, pdf_only)
    for png in (pdf_only / "results" / "figures").glob("**/*.png*"):
        png.unlink()
    drawn = redraw(pdf_only, tmp_path / "redrawn")
    assert len([p for p in drawn if p.suffix == ".pdf"]) >= 7 and all(p.is_file() for p in drawn)
