# The two Quick start commands are `make tutorial` and `make test`; everything else is a helper.
# uv from the PATH, else a copy in .tools/ (a venv of its own: no --user installs, no PEP 668 trouble), pinned
# with its hashes by uv-requirements.txt
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
NOTEBOOKS := 01-train 02-register 03-web-service 04-streaming 05-batch 07-lifecycle 08-monitor

.PHONY: setup setup-monitoring tutorial test test-unit test-core test-monitoring test-spark test-orchestration lint export check-export bench stack-start stack-stop images

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet --require-hashes -r uv-requirements.txt

# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile
# scikit-learn, scipy and pandas from source, seconds of each cold start (a repeated sync is quick).
setup: $(UV)  ## create .venv from the lock file
	$(UV) sync --frozen --compile-bytecode

# Evidently (notebook 08's monitoring) is an optional extra: it adds about 380 MB to .venv.
setup-monitoring: $(UV)  ## .venv with the optional monitoring extra (Evidently)
	$(UV) sync --frozen --compile-bytecode --extra monitoring

tutorial: setup-monitoring  ## run the numbered notebooks in order into runs/
	$(PY) scripts/run_notebooks.py $(NOTEBOOKS)

# `make test` runs each test once: the unit layer, then the integration layer in four parts (each extra's part
# syncs its own extra, which removes the others'; the README runs, last, need Prefect).
test: test-unit test-core test-monitoring test-spark test-orchestration  ## every test (TAXI_DATA_DIR points at real TLC months when there are some)

test-unit: setup  ## the fast loop: tests/unit only (no servers, no subprocesses, no registry; under a minute)
	$(PY) -m pytest tests/unit

test-core: setup  ## the integration tests but those of the optional extras and the README runs, in the core install
	$(PY) -m pytest tests/integration --ignore=tests/integration/test_orchestration.py --ignore=tests/integration/test_readme.py --ignore=tests/integration/test_monitoring.py --ignore=tests/integration/test_spark.py --ignore=tests/integration/test_retraining_loop.py

test-monitoring: setup-monitoring  ## the monitoring tests (notebook 08 included), after adding the optional monitoring extra
	$(PY) -c "from ride_duration.monitoring import import_evidently; import_evidently()"  # fail, not skip, if the extra did not install
	$(PY) -m pytest tests/integration/test_monitoring.py tests/integration/test_retraining_loop.py

test-spark: $(UV)  ## the Spark scorer's tests, after adding the optional spark extra (needs Java 17+)
	$(UV) sync --frozen --compile-bytecode --extra spark
	$(PY) -c "import pyspark"  # fail, not skip, if the extra did not install
	$(PY) -m pytest tests/integration/test_spark.py

# The README runs are here because some of their blocks install the extra offline, from uv's cache, which this
# target's first line has filled.
test-orchestration: $(UV)  ## the Prefect tests and the README runs, after adding the optional orchestration and monitoring extras
	$(UV) sync --frozen --compile-bytecode --extra orchestration --extra monitoring
	$(PY) -c "import prefect"  # fail, not skip, if the extra did not install
	$(PY) -m pytest tests/integration/test_orchestration.py tests/integration/test_readme.py

lint: setup  ## ruff's lint and format checks, notebooks included (`ruff format .` and `ruff check --fix .` mend most findings)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

export: setup  ## regenerate the exported scripts from their notebooks
	$(PY) scripts/export.py

check-export: setup  ## fail if a committed export differs from a fresh export
	$(PY) scripts/export.py --check

bench: $(UV)  ## measure ours against the course's way, side by side (monitoring and Spark beside scoring: both extras)
	$(UV) sync --frozen --compile-bytecode --extra monitoring --extra spark
	$(PY) -m benchmarks

images: setup  ## draw the diagrams in images/ (scripts/make_images.py --plots also redraws the batch plots)
	$(PY) scripts/make_images.py

stack-start: setup  ## start moto_server and the MLflow server on loopback
	$(PY) scripts/local_stack.py start

stack-stop:  ## stop them
	$(PY) scripts/local_stack.py stop
