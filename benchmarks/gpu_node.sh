#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a GPU node that has Python, PyTorch with CUDA and the common scientific
# packages, but no internet and none of seelike's workflow packages (Snakemake, submitit, jsonschema, ...).
#
#   benchmarks/gpu_node.sh wheels [DIR]      # here, with PyPI: download the wheels the node lacks into DIR
#                                            # (default .whl in the repository) for its Python (GPU_NODE_PYTHON, default 3.12)
#   benchmarks/gpu_node.sh run [ARGS...]     # on the GPU node, from a copy of this repository holding DIR:
#                                            # install DIR/*.whl into /tmp/site, check the imports, then
#                                            # python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json ARGS
#
# The wheels are the pins of envs/requirements.txt (their one owner) for the packages named in
# CARRIED below: the lock minus torch, torchvision, triton and NVIDIA's libraries (the node's own,
# built for its CUDA) and minus what a PyTorch GPU image already has (numpy, h5py, pandas, matplotlib,
# pillow, PyYAML, safetensors, huggingface-hub, tqdm, ...). timm is carried so that the models are built
# by the pinned version. The linters of the lock (black, snakefmt) are left out. About 29 MB.
#
# Environment: GPU_NODE_PYTHON (wheels: the node's Python version), WHEELS (DIR, default .whl),
# PYTHON (run: the node's interpreter, default python3), OUT (run: where the JSON and the log go,
# default benchmarks/out), SITE (run: the install folder, default /tmp/site).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK=$ROOT/envs/requirements.txt
WHEELS=${WHEELS:-$ROOT/.whl}

CARRIED=(
  timm submitit jsonschema jsonschema-specifications referencing rpds-py
  snakemake snakemake-interface-common snakemake-interface-executor-plugins snakemake-interface-logger-plugins
  snakemake-interface-report-plugins snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
  annotated-types argparse-dataclass conda-inject configargparse connection-pool docutils dpath fastjsonschema
  gitdb gitpython greenlet httpcore2 httpx2 humanfriendly immutables jupyter-core nbformat platformdirs pulp
  pydantic pydantic-core smart-open smmap sqlalchemy sqlmodel tenacity throttler traitlets truststore
  typing-inspection tzdata yte
)

# the lock's pin of each carried package (names compared as PEP 503 normalises them)
pins() {
  local wanted
  wanted=$(printf '%s\n' "${CARRIED[@]}")
  awk -F'==' -v wanted="$wanted" '
    BEGIN { n = split(wanted, w, "\n"); for (i = 1; i <= n; i++) want[w[i]] = 1 }
    /^[A-Za-z0-9]/ { name = tolower($1); gsub(/[-_.]+/, "-", name); if (name in want) { print $0; seen[name] = 1 } }
    END { for (k in want) if (!(k in seen)) { print "gpu_node.sh: " k " is not pinned in envs/requirements.txt" > "/dev/stderr"; bad = 1 }
          exit bad }' "$LOCK"
}

wheels() {
  local dir=${1:-$WHEELS} py=${GPU_NODE_PYTHON:-3.12} pin
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  mkdir -p "$dir"
  for pin in $(pins); do
    # a binary wheel for the node's Python; a pure-Python package published only as a source
    # distribution is built into a py3 wheel here
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        "${platforms[@]}" -d "$dir" "$pin" 2>/dev/null \
      || python3 -m pip wheel -q --no-deps -w "$dir" "$pin" 2>/dev/null \
      || { echo "gpu_node.sh: no wheel of $pin for CPython $py" >&2; exit 1; }
  done
  echo "gpu_node.sh: $(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1), in $dir (CPython $py)"
}

run() {
  local py=${PYTHON:-python3} site=${SITE:-/tmp/site} out=${OUT:-$ROOT/benchmarks/out}
  mkdir -p "$out"
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # seelike itself from this copy (absolute: Snakemake's jobs run in other folders)
  export PYTHONPATH=$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}
  "$py" - <<'EOF'
import importlib, sys
versions = {}
for name in ("torch", "timm", "h5py", "numpy", "pandas", "matplotlib", "snakemake", "submitit", "jsonschema", "seelike.config"):
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "ok")
    except Exception as e:
        sys.exit(f"gpu_node.sh: cannot import {name}: {type(e).__name__}: {e} (run 'benchmarks/gpu_node.sh wheels' where pip works)")
import torch
print("gpu_node.sh: python", sys.version.split()[0], " ".join(f"{k} {v}" for k, v in versions.items()),
      "| cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
  df -h /dev/shm | tail -1 | awk '{print "gpu_node.sh: /dev/shm " $2 " (" $4 " free)"}'
  cd "$ROOT"
  "$py" benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" 2> >(tee "$out/gpu_check.log" >&2)
}

case ${1:-} in
  wheels) shift; wheels "$@" ;;
  run) shift; run "$@" ;;
  pins) pins ;;
  *) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
