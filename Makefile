# The two commands of the README, plus the pieces they are made of.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
CONFIG ?= config/demo.yaml
STAMP := $(VENV)/.installed

.PHONY: demo test install report bench clean-results

$(STAMP): envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r envs/requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Whole workflow on the embedded default, then the HTML report.
demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake all archive --cores $(CORES) --configfile $(CONFIG)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) --report results/report.html
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/seelike show findings
	@echo "Figures in results/figures/, report at results/report.html, findings in results/findings/"

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -rs tests

bench: $(STAMP)
	$(BIN)/pip install -q -r envs/requirements-bench.txt
	PATH=$(abspath $(BIN)):$$PATH sh -c 'for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done'

clean-results:
	find results -mindepth 1 ! -name README.md -exec rm -rf {} +
