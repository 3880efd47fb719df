# neuroflow: every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STUDY := build/demo-study
DEMO_OUT := demo-out

.PHONY: demo test lint unit integration bench bench-gpu proto proto-check system-deps stack-up stack-down clean helm-check capacity chart-topics fuzz chaos viewer-bundle

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The console viewer's front end: NiiVue from npm (the lockfile's versions), bundled by esbuild; no CDN at run time.
VIEWER_UI := services/neuroflow/console/viewer/frontend
VIEWER_BUNDLE := services/neuroflow/console/viewer/static/viewer.js
$(VIEWER_UI)/node_modules/.installed: $(VIEWER_UI)/package-lock.json
	cd $(VIEWER_UI) && npm ci --no-audit --no-fund
	touch $@

$(VIEWER_BUNDLE): $(VIEWER_UI)/node_modules/.installed $(wildcard $(VIEWER_UI)/src/*.js)
	cd $(VIEWER_UI) && npm run --silent build

viewer-bundle: $(VIEWER_BUNDLE)

# Debian packages the tests read: Colin27 (mricron-data) and the DICOM validator dciodvfy (dicom3tools).
system-deps:
	@scripts/install-system-deps.sh

demo: $(STAMP) viewer-bundle
	$(PY) scripts/make_demo_study.py $(DEMO_STUDY)
	$(VENV)/bin/neuroflow classify $(DEMO_STUDY)
	$(VENV)/bin/neuroflow run $(DEMO_STUDY) --out $(DEMO_OUT)
	@cat $(DEMO_OUT)/summary.txt

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests scripts models deploy
	$(VENV)/bin/mypy

test: $(STAMP) system-deps lint viewer-bundle
	$(VENV)/bin/pytest -q --durations=15

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit tests/contract

integration: $(STAMP) system-deps viewer-bundle
	$(VENV)/bin/pytest -q tests/integration tests/contract

stack-up: $(STAMP) system-deps
	$(VENV)/bin/neuroflow stack up

stack-down: $(STAMP)
	$(VENV)/bin/neuroflow stack down

bench: $(STAMP) system-deps
	$(PY) scripts/bench.py --out BENCHMARKS.md
	$(PY) scripts/bench_distributed.py --out BENCHMARKS.md
	$(PY) scripts/bench_triton.py --out BENCHMARKS.md
	$(PY) scripts/capacity_model.py --out BENCHMARKS.md
	$(PY) scripts/bench_longitudinal.py --out BENCHMARKS.md
	$(PY) scripts/bench_ms_real.py --out BENCHMARKS.md
	$(PY) scripts/bench_registration.py --out BENCHMARKS.md
	$(PY) scripts/bench_indexing.py --out BENCHMARKS.md
	$(PY) scripts/bench_peers.py --out BENCHMARKS.md
	$(PY) scripts/bench_scaling.py --out BENCHMARKS.md

# On a machine with an NVIDIA GPU and PyTorch (not in `make bench`: CI and this project's machines have none): the
# inference tier per patch, per study and under concurrent clients, then the capacity model from its GPU figure.
bench-gpu: $(STAMP)
	$(PY) scripts/bench_gpu.py --json build/bench_gpu.json --out BENCHMARKS.md
	$(PY) scripts/capacity_model.py --out BENCHMARKS.md

# 10,000 mutated DICOM files through index, classify and convert, each case in a memory- and time-limited child;
# fails on any crash, hang, memory blow-up or foreign exception; the figures go to BENCHMARKS.md.
fuzz: $(STAMP)
	$(PY) scripts/fuzz_dicom.py --count 10000 --out BENCHMARKS.md

# Real studies through the local stack while workers, the orchestrator, Kafka, PostgreSQL, both Orthancs
# and Triton are killed or stopped one after another; fails on any lost or duplicated result (~40 min).
chaos: $(STAMP) system-deps
	$(PY) scripts/chaos.py --out BENCHMARKS.md

# The Helm chart and the image build files, checked offline (no cluster, no container engine); the capacity model.
helm-check: $(STAMP)
	$(VENV)/bin/pytest -q tests/deploy

# Workers and GPUs for 1, 5, 20 and 50 sites, from the stage timings in BENCHMARKS.md.
capacity: $(STAMP)
	$(PY) scripts/capacity_model.py

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

proto-check: $(STAMP)
	$(PY) scripts/gen_proto.py --check

# The chart's Kafka topic and consumer-group names (helm/neuroflow/files/topics.yaml), from core/topics.py.
chart-topics: $(STAMP)
	$(PY) scripts/gen_chart_topics.py

clean:
	rm -rf build $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
