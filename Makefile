# Two entry points (see README): `make demo` and `make test`. Both create .venv idempotently.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
PORT ?= 8000

# The one workaround for sam2 (pulled in by monailabel): it ships its own training scripts as a
# top-level package named `training`, which shadows ours in site-packages. Nothing imports sam2's
# copy, so it is removed after every install, and the install fails unless ours is then found.
define REMOVE_SAM2_TRAINING
import importlib.metadata as m, importlib.util, pathlib, shutil
files = m.files("sam2") or []
hit = [f for f in files if str(f) == "training/__init__.py"]
if hit:
    shutil.rmtree(pathlib.Path(hit[0].locate()).parent, ignore_errors=True)
assert importlib.util.find_spec("training.data.labels"), "another top-level `training` package shadows neolabel's"
endef
export REMOVE_SAM2_TRAINING

.PHONY: venv demo serve test lint clean-venv

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==24.3.1"
	# torch first, pinned, so no other requirement can pull a different build
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	cd / && $(abspath $(BIN))/python -c "$$REMOVE_SAM2_TRAINING"  # outside the repo: finds the installed packages
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: venv
	$(BIN)/neolabel serve --port $(PORT)

test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
