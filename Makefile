# One command each: `make run` (install and start the dashboard), `make test` (install and run every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
# The dashboard listens on this machine only unless told otherwise (ADDRESS=0.0.0.0 for a shared
# deployment: read the README's "Shared deployment" first).
ADDRESS ?= 127.0.0.1
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-test browser pacs viewer bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -r requirements.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -r requirements-test.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test browser pacs viewer

# Debian's Chromium for the real-browser tests (Playwright must never download its own browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && \
	  $(SUDO) apt-get install -y --no-install-recommends chromium fonts-liberation; }

# Debian's Orthanc with its DICOMweb plugin (a real PACS for tests/test_pacs.py and tests/test_air.py),
# dicom3tools (dciodvfy checks the written SR, parametric map and capture) and Pixelmed (its
# DicomSRValidator checks the SR's template, as the IHE connectathon does).
pacs:
	@{ [ -x /usr/sbin/Orthanc ] && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] && \
	   command -v dciodvfy >/dev/null 2>&1 && [ -e /usr/share/java/pixelmed.jar ] && \
	   command -v java >/dev/null 2>&1; } || { $(SUDO) apt-get update && \
	  $(SUDO) apt-get install -y --no-install-recommends orthanc orthanc-dicomweb dicom3tools pixelmed-apps; }

# OHIF, the open-source DICOMweb viewer, for tests/test_viewer.py: the npm package @ohif/app ships
# the built viewer in dist/ (no build here: its engines field asks for Node 24, but serving dist/
# needs none). `npm pack` fetches the pinned version, checked against the registry's SHA-1, into the
# gitignored .cache/ohif/ once (skipped when unpacked); the test serves dist/ and downloads nothing.
OHIF_VERSION ?= 3.13.2
OHIF_SHA1    ?= 26a51ffcc1704c30fff403258a1d7392e9a991f3
OHIF_DIR     := .cache/ohif
viewer:
	@[ -f $(OHIF_DIR)/$(OHIF_VERSION)/dist/index.html ] || { \
	  command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends npm; }; \
	  mkdir -p $(OHIF_DIR) && \
	  ( cd $(OHIF_DIR) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null ) && \
	  echo "$(OHIF_SHA1)  $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz" | sha1sum -c --quiet - && \
	  rm -rf $(OHIF_DIR)/$(OHIF_VERSION).tmp && mkdir -p $(OHIF_DIR)/$(OHIF_VERSION).tmp && \
	  tar -xzf $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz -C $(OHIF_DIR)/$(OHIF_VERSION).tmp --strip-components=1 package/dist package/package.json package/LICENSE && \
	  rm -rf $(OHIF_DIR)/$(OHIF_VERSION) && mv $(OHIF_DIR)/$(OHIF_VERSION).tmp $(OHIF_DIR)/$(OHIF_VERSION) && \
	  rm -f $(OHIF_DIR)/ohif-app-$(OHIF_VERSION).tgz; }

run: install
	$(PY) -m streamlit run dashboard/Home.py --server.port $(PORT) --server.address $(ADDRESS)

# The engine's import contract (pyproject.toml, [tool.importlinter]) first: a breach fails the run.
test: install-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks.inference
	$(PY) -m training.bench

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
