"""scripts/compare_results.py: the before/after check of a refactor."""
import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("compare_results", ROOT / "scripts" / "compare_results.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def _run(root, accuracy=0.5, host="a", throughput=100.0, cka="0.91"):
    (root / "models" / "m").mkdir(parents=True)
    (root / "models" / "m" / "card.json").write_text(json.dumps({"metrics": {"test_accuracy": accuracy},
                                                                "provenance": {"host": host}}))
    (root / "models" / "m" / "metrics.csv").write_text(f"epoch,train_loss,images_per_s\n1,2.5,{throughput}\n")
    (root / "cka").mkdir()
    (root / "cka" / "m__m.csv").write_text(f"layer_x,layer_y,cka\na,a,{cka}\n")


def test_only_results_count(tmp_path, capsys):
    _run(tmp_path / "a")
    _run(tmp_path / "b", host="b", throughput=250.0)          # provenance and wall clock: not results
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    _run(tmp_path / "c", cka="0.92")
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "DIFFERS: cka/m__m.csv" in capsys.readouterr().out
    _run(tmp_path / "d", accuracy=0.6)
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "d")]) == 1
