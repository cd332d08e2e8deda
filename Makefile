# medge: the two commands are `make demo` and `make test` (see README.md).
# Each sets up what it needs from nothing on a Debian machine with Python 3.11:
# system packages via apt-get (when missing), a .venv from the pinned lock.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medge-installed
TRAIN_STAMP := $(VENV)/.medge-train-installed
ONCE ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=

# Debian packages the demo and the suite use, as "command:package" pairs.
SYSTEM_DEPS := /usr/sbin/mosquitto:mosquitto /usr/bin/mosquitto_pub:mosquitto-clients \
	/usr/bin/storescu:dcmtk /usr/bin/dciodvfy:dicom3tools /usr/bin/chromium:chromium \
	/usr/lib/postgresql/15/bin/initdb:postgresql /usr/bin/systemd-analyze:systemd /usr/sbin/Orthanc:orthanc

.PHONY: demo test check lint format lock sysdeps venv train clean help audit sbom

help:
	@echo "make demo   - set everything up and run the demo (ONCE=1 exits after the summary)"
	@echo "make test   - set everything up and run the whole test suite"
	@echo "make check  - ruff + mypy"
	@echo "make lock   - re-pin requirements.lock from pyproject.toml"
	@echo "make train  - retrain the reference model (needs the train extra, ~10 min)"
	@echo "make audit  - pip-audit of requirements.lock (needs the network: PyPI's vulnerability data)"
	@echo "make sbom   - CycloneDX 1.6 SBOM of medge and requirements.lock -> $(SBOM)"

sysdeps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
		cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		[ -x "$$cmd" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get install$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): requirements.lock pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

venv: $(STAMP)

$(TRAIN_STAMP): $(STAMP) requirements-train.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-train.lock
	@touch $@

demo: sysdeps $(STAMP)
	$(BIN)/medge demo $(if $(ONCE),--once,) $(DEMO_ARGS)

test: sysdeps $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: check

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

train: $(TRAIN_STAMP)
	$(BIN)/python -m sdk.reference_model.train --out sdk/reference_model

# Re-pin: resolve every extra but `train` in a scratch venv and freeze it.
lock:
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/pip install -q -U pip
	build/lockenv/bin/pip install -q ".[openvino,compile,dashboard,sr,dev]" setuptools
	(echo '# Pinned Python dependencies for every extra but train (make lock re-pins).'; build/lockenv/bin/pip freeze --all --exclude medge --exclude pip --exclude wheel) > requirements.lock
	rm -rf build/lockenv

# Known vulnerabilities of every pinned dependency (PyPI's advisory data: needs the network, so not in `make test`).
# The lock is fully pinned, so pip-audit audits it as written instead of resolving it in a scratch venv.
audit: $(STAMP)
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --strict --progress-spinner off

# The SBOM device makers file with their regulatory submissions: medge (name and version from pyproject.toml)
# and every component of the lock, as CycloneDX 1.6 JSON. Offline.
SBOM := build/sbom/medge-sbom.cdx.json
sbom: $(STAMP)
	@mkdir -p $(dir $(SBOM))
	$(BIN)/cyclonedx-py requirements --pyproject pyproject.toml --mc-type application --sv 1.6 --of JSON \
		--output-reproducible -o $(SBOM) requirements.lock
	@$(BIN)/python -c "import json; b = json.load(open('$(SBOM)')); m = b['metadata']['component']; \
		print(f\"{m['name']} {m['version']}: {len(b['components'])} components, CycloneDX {b['specVersion']} -> $(SBOM)\")"

clean:
	rm -rf build $(VENV) .pytest_cache .ruff_cache .mypy_cache
