# The commands people type. README's first two lines are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl

.PHONY: setup demo test lint typecheck pytest bench clean

# Every extra, at the versions CI tests with (constraints.txt; pyproject.toml keeps ranges).
$(BIN)/evalharness: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[all]"
	@touch $@

setup: $(BIN)/evalharness

# Main job with real successes and no model to download: the scripted expert (privileged sim
# state, physics only) on 2 libero_spatial tasks x 2 episodes; a 128 px video of episode 0.
demo: setup
	rm -rf results/demo
	$(BIN)/evalharness run --suite libero_spatial --policy scripted --tasks 0,1 \
		--episodes-per-task 2 --num-envs 2 --camera-size 128 --out results/demo --video 1

test: setup lint typecheck pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# envs/ and policies/ install as evalharness.envs / evalharness.policies; mypy cannot follow
# setuptools' editable import hook, so it checks a copy laid out the way it is installed.
typecheck:
	rm -rf build/typecheck && mkdir -p build/typecheck
	cp -r evalharness build/typecheck/evalharness
	cp -r envs build/typecheck/evalharness/envs
	cp -r policies build/typecheck/evalharness/policies
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p evalharness

pytest:
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf build results .mypy_cache .ruff_cache .pytest_cache
