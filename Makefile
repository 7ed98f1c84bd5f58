# One command sets up and runs the main job (`make demo`), one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-store

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision first and pinned: on the team's machines these wheels lie on disk.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mitoprobe run

# lint-imports checks the layer contracts in pyproject.toml (store -> embedder -> classifiers -> finetune
# -> dashboard -> mitoprobe); then the whole suite. CI (.ci/run) runs exactly this target.
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

clean-store:
	rm -rf mitoprobe-store
