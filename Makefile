# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first
# (idempotent: the install step reruns only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch/torchvision pinned to the builds this machine ships on local disk (docs/architecture.md).
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast lint experiments clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,cluster]'
	touch $(STAMP)

# The main job on built-in defaults: synthetic plates, SQLite study (nas.db), MLflow
# (sqlite:///mlflow.db), a quick search with the classic baselines, the Pareto plots, and the
# knee of the front exported as a standalone module. Rerunning resumes (nothing left to do).
demo: $(STAMP)
	$(BIN)/nas-neck search --trials 8
	$(BIN)/nas-neck pareto --study pafpn-family
	$(BIN)/nas-neck export --study pafpn-family --knee --out runs/export --onnx

# The suite, then the tests marked `precision` again on the CPU bf16 path this machine does not
# take by itself (NAS_NECK_CPU_BF16), so both arithmetic paths of `--precision auto` run here.
test: $(STAMP)
	@$(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	[ $$rc -eq 0 ] || exit $$rc; \
	other=$$($(BIN)/python -c "from nas_neck.device import cpu_has_native_bf16 as n; print('emulated' if n() else 'native')"); \
	echo "precision-sensitive tests again with NAS_NECK_CPU_BF16=$$other (the other --precision auto path):"; \
	NAS_NECK_CPU_BF16=$$other $(BIN)/python -m pytest -q -m precision

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# The studies of experiments/RESULTS.md at their default sizes (each < 45 min on 2 CPU
# cores, about 2.5 h in all); each writes experiments/out/<study>.json and .png.
experiments: $(STAMP)
	for s in bench_cache bench_latency_stability bench_throughput proxy_fidelity search_vs_random precision_study; do \
		$(BIN)/python experiments/$$s.py || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check nas_neck tests experiments
	$(BIN)/ruff format --check nas_neck tests experiments

clean:
	rm -rf $(VENV) runs nas.db mlflow.db .nas-neck-cache
