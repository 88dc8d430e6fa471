# Two entry points for a fresh clone: `make demo` and `make test`. Both create .venv and install
# the package with the CPU torch pin in constraints.txt (a plain `torch` would pull CUDA wheels).
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[test,video,hf,browser,lightning,mlflow,wandb,tune]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/g2d demo --out runs/demo

test: $(STAMP)
	$(PYTHON) -m pytest -q

clean:
	rm -rf $(VENV) runs
