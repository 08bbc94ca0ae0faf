# `make demo`, `make test` and `make bench` each set up .venv on first use, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dgf-installed

.PHONY: demo test test-fast bench clean

# The distribution was called dgf until it was renamed deep-generative-filter (dgf on
# the package index is another project): `pip uninstall dgf` drops that install first
# (removing it after would take the commands with it); a no-op where it is absent.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip uninstall -y dgf
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# Two pytest workers, each taking whole test files (--dist loadfile, so a module's
# fixtures are built once): many tests wait on subprocesses, so two share 2 cores well.
# The longest files are handed out first (tests/conftest.py, LONGEST_FILES), in that
# order: --no-loadscope-reorder, else pytest-xdist hands out the files with the most
# tests first and the one-test demo ran alone at the end.
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The quick check while editing (under a minute): everything but the tests marked slow
# (over about 2 s each: training runs, subprocesses, SIGKILL, exports, compiled graphs,
# real pairs); `make test` runs all of them.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The quick benchmark set: minutes, each script printing its numbers
# (docs/benchmarks.md). The loader and evaluation read ../shared/data/pairs-small by default.
# The long ones run by hand: bench_deblur.py (a 12-megapixel photo; --photos and
# --command time dgf-deblur itself),
# bench_build_hdf5.py, bench_levers.py and bench_bf16_psnr.py (these two take an
# HDF5 file).
bench: $(STAMP)
	$(PY) benchmarks/bench_loader.py --epochs 1 --rounds 2
	$(PY) benchmarks/bench_evaluate.py --count 32
	$(PY) benchmarks/bench_inference.py --channel-rates 8 16 --repeats 3
	$(PY) benchmarks/bench_train.py --small

clean:
	rm -rf $(VENV) demo_out
