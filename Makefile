# fundus-lit developer targets. Every target installs what it needs first (idempotent, quick when
# nothing changed): `make demo` and `make test` work right after a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_runs

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/fundus-lit fit --config recipes/clip.yaml --config recipes/overlays/tiny.yaml \
		--config callbacks/default.yaml --trainer.logger.init_args.save_dir=$(DEMO_DIR)

lint: install
	$(VENV)/bin/ruff check fundus_lit tests benchmarks
	$(VENV)/bin/ruff format --check fundus_lit tests benchmarks

bench: install
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/synth_speed.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs lightning_logs .pytest_cache
