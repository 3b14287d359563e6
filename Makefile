# Two commands set up everything on a fresh machine:
#   make demo   - creates .venv if missing, then runs the main job on a bundled real example
#   make test   - creates .venv if missing, then runs the test suite
# Other targets: make venv, make lint, make test-all (includes tests marked slow),
#   make app     - installs the web page's extra (gradio) if missing, then starts it on http://127.0.0.1:7860
#                  (options: make app APP_ARGS="--port 8000 --device cuda")
#   make app-deps - installs the web page's extra and its browser test's (playwright; the browser is Debian's chromium)

PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# torch and torchvision are installed first and on their own, so that basicsr (a source package) is
# built against them. Override for another CUDA build, e.g.
#   make venv TORCH_PKGS="torch torchvision --index-url <your wheel index>"
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
STAMP      := $(VENV)/.installed
APP_STAMP  := $(VENV)/.app-installed
APP_TEST_STAMP := $(VENV)/.app-test-installed
APP_ARGS   ?=

.PHONY: venv demo test test-all lint clean-venv app app-deps

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PKGS)
	# basicsr 1.4.2 ships only as an sdist whose build imports torch: build it against the torch above.
	$(PY) -m pip install -q --no-build-isolation basicsr==1.4.2
	$(PY) -m pip install -q -r requirements.txt pytest ruff
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import extracter; from extracter.registry import use_basicsr; use_basicsr(); print('extracter', extracter.__version__, 'installed with basicsr')"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

$(APP_STAMP): $(STAMP) requirements-app.txt
	$(PY) -m pip install -q -r requirements-app.txt
	touch $(APP_STAMP)

$(APP_TEST_STAMP): $(APP_STAMP) requirements-app-test.txt
	$(PY) -m pip install -q -r requirements-app-test.txt
	touch $(APP_TEST_STAMP)

app-deps: $(APP_TEST_STAMP)

app: $(APP_STAMP)
	$(PY) -m extracter.app $(APP_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
