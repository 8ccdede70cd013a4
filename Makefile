# One virtual environment in .venv; every target creates it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 11112
AE_TITLE ?= MY_PACS

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint format system-deps bench soak clean viewer

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## run: receive on port $(PORT) as $(AE_TITLE) into ./received, indexing into ./pacs.db
run: $(BIN)/.installed
	$(BIN)/python manage.py runscp $(PORT) $(AE_TITLE)

## system-deps: DCMTK's storescu/echoscu/dcmsend/findscu/movescu/getscu (the peers the end-to-end
## tests talk to), Chromium with its driver (the browser test), Orthanc (Query/Retrieve client
## tests) with its PostgreSQL index plugin (the benchmark's PostgreSQL pair) and DICOMweb plugin
## (DICOMweb client tests), npm (the OHIF viewer), HAProxy (the load-balanced nodes) and
## systemd-analyze (deploy/'s units)
system-deps:
	@missing=""; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	[ -e /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so ] || missing="$$missing orthanc-postgresql"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The suite runs on SQLite, then on this PostgreSQL server (`make test PG_URL=` skips it).
PG_URL ?= postgres://postgres:postgres@127.0.0.1:5432/pacs

## viewer: the OHIF viewer (npm @ohif/app, pinned in dicomweb/viewer.py) into ./viewer, served
## at /viewer/ and configured for /dicomweb/ (downloads ~50 MB from npm once)
viewer: $(BIN)/.installed
	@[ -f viewer/index.html ] || $(BIN)/python manage.py installviewer

## test: lint, then the whole test suite on SQLite and on PostgreSQL
test: $(BIN)/.installed system-deps viewer
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest
	@if [ -n "$(PG_URL)" ]; then \
		echo "== the same suite on PostgreSQL"; \
		DATABASE_URL="$(PG_URL)" $(BIN)/python -m pytest; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .test-pacs.db*

## bench: the throughput benchmark against DCMTK, pynetdicom and (if installed) Orthanc, then
## Query/Retrieve: C-FIND at 1M indexed instances, C-MOVE/C-GET of 500 instances vs Orthanc;
## ingest with and without a forwarding rule, forwarding vs Orthanc's store job; DICOMweb:
## STOW-RS and WADO-RS of 500 instances vs Orthanc's DICOMweb plugin, QIDO-RS at 1M
bench: $(BIN)/.installed system-deps
	$(BIN)/python bench/run.py --count 2000 --rows 64 --associations 1 4 --repeat 3 \
		$(if $(PG_URL),--pg-url $(PG_URL))
	$(BIN)/python bench/run.py --count 2000 --rows 64 --header scanner --associations 1 4 \
		--repeat 3 --peers ours orthanc $(if $(PG_URL),ours-pg --pg-url $(PG_URL))
	$(BIN)/python bench/run.py --count 300 --rows 512 --associations 1 4 --repeat 3 \
		--peers ours orthanc dcmtk
	$(BIN)/python bench/qr.py --rows 1000000 --count 500 --pixels 64 512 --repeat 3
	$(BIN)/python bench/ingest_service.py --count 2000 --series 4 --repeat 5
	$(BIN)/python bench/ingest_service.py --count 2000 --series 4 --repeat 5 --forwarding-rule
	$(BIN)/python bench/forward.py --count 500 --pixels 64 512 --repeat 3
	$(BIN)/python bench/dicomweb.py --rows 1000000 --count 500 --pixels 512 --repeat 3

## soak: five minutes of steady ingest; fails unless memory, open files and threads stay flat
SOAK_SECONDS ?= 300
soak: $(BIN)/.installed
	$(BIN)/python bench/soak.py --seconds $(SOAK_SECONDS) --senders 4
