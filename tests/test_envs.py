"""The environment files agree: the conda environment for `--sdm conda` pins its packages (the top-level
requirements and a few more) at the versions of requirements.txt; the bench pins cover the bench extra."""
import re
from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parents[1] / "envs"


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_conda_env_matches_requirements():
    req = pins((ENVS / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ENVS / "seelike.conda.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = pins(pip_section)
    assert conda, "no pinned packages in the conda env"
    for name, version in conda.items():
        assert req.get(name) == version, f"{name}: conda env pins {version}, requirements.txt pins {req.get(name)}"
    top = [l.split("#")[0].strip() for l in (ENVS / "requirements.in").read_text().splitlines()]
    for spec in filter(None, top):
        name = re.split(r"[<>=!~ ]", spec)[0].lower().replace("_", "-")
        assert name in conda, f"top-level requirement {name} missing from the conda env"
        assert name in req, f"top-level requirement {name} not pinned in requirements.txt"
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]


def test_bench_requirements_pin_the_bench_extra():
    """`make bench` installs requirements-bench.txt: it must pin every package of pyproject's `bench`
    extra (benchmarks/bench_cka.py imports both public CKA packages)."""
    import tomllib

    project = tomllib.loads((ENVS.parent / "pyproject.toml").read_text())["project"]
    extra = {re.split(r"[<>=!~ \[]", spec)[0].lower().replace("_", "-")
             for spec in project["optional-dependencies"]["bench"]}
    bench = pins((ENVS / "requirements-bench.txt").read_text().splitlines())
    assert extra and extra <= set(bench), f"not pinned in requirements-bench.txt: {sorted(extra - set(bench))}"
    req = pins((ENVS / "requirements.txt").read_text().splitlines())
    for name, version in bench.items():
        assert req.get(name, version) == version, f"{name}: bench pins {version}, requirements.txt pins {req[name]}"
