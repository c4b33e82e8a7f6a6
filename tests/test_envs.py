"""The conda environment for `--sdm conda` lists the same packages, at the same versions, as the pins."""
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
