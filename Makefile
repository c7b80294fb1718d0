# Two commands do all set-up on a fresh machine (each installs what it needs into .venv first):
#   make demo   — the main job: `zkapex local` on the embedded default (tiny ViT, scikit-learn digits)
#   make test   — the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
OUT ?= runs/local-vit-digits

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zkapex local --model vit --dataset digits --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 tests   # two workers, each test file on one

clean:
	rm -rf $(VENV) runs .pytest_cache
