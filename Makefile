# Course Supporter — developer entry points. Run as root on Debian 12.
#   make vps       a local VPS (systemd-nspawn) provisioned by playbooks/site.yml
#   make vps-cluster  a local cluster (web, two app hosts, db: four nspawn machines) provisioned by site.yml
#   make vps-upgrade  deploy the checkout (or SOURCE=<dir>) to the running local VPS
#   make vps-backup   back up its database into its S3 bucket now
#   make vps-restore BACKUP=latest  restore its database from a backup in that bucket
#   make vps-down  stop and remove it, and the host-side servers it uses
#   make test   every test (installs what it needs first)
#   make check INVENTORY=<dir>  read-only checks of a deployment (ARGS=--ask-vault-pass for a vault)
#   make docs   regenerate docs/configuration.md from app/config.py
#   make dev    the app on localhost with a throwaway Postgres and S3 server
#   make bench  benchmarks in tests/bench/, printing their figures
#   make fuzz   the API fuzzing of make test, with many more examples
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     := /usr/bin/python3
VENV       := .venv
VENV_PY    := $(VENV)/bin/python
TEST_USER  := cs-test
# Debian packages the tests and tools need on the machine itself.
APT_PACKAGES := postgresql postgresql-client python3-venv python3-dev gcc procps wrk \
	systemd-container mmdebstrap pebble nftables iproute2 openssh-client curl nodejs
# npm tools the tests use (Spectral, the OpenAPI linter), pinned by their lock file.
NPM_TOOLS  := tests/openapi_lint

.PHONY: help deps apt-packages test-user test check docs dev bench fuzz vps vps-cluster vps-upgrade vps-backup vps-restore vps-down

help:
	@echo "make test    run every test (installs prerequisites first)"
	@echo "make check INVENTORY=<dir>  read-only checks of a deployment over SSH and HTTPS (default: inventory/local)"
	@echo "make docs    regenerate docs/configuration.md from the settings in app/config.py"
	@echo "make dev     app on http://127.0.0.1:8080 with throwaway Postgres + S3 and a demo key"
	@echo "make bench   run the benchmarks in tests/bench/"
	@echo "make fuzz    fuzz the API from its OpenAPI document, longer than make test does"
	@echo "make vps       boot and provision the local VPS; prints its URL and a demo key"
	@echo "make vps-cluster  boot and provision the local cluster (web, app1, app2, db); prints its URL and a demo key"
	@echo "make vps-upgrade  deploy the checkout to the running local VPS (no request dropped)"
	@echo "make vps-backup   back up the local VPS's database into its S3 bucket now"
	@echo "make vps-restore BACKUP=latest  restore its database from a backup (or BACKUP=backups/<key>.dump)"
	@echo "make vps-down  stop and remove the local VPS, the local cluster and their host-side servers"

deps: apt-packages test-user $(VENV)/.installed $(NPM_TOOLS)/node_modules/.installed

apt-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: need root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# initdb refuses to run as root: tests run their throwaway clusters as this user.
test-user:
	@if [ "$$(id -u)" = 0 ] && ! id -u $(TEST_USER) >/dev/null 2>&1; then \
	  useradd --system --no-create-home --shell /usr/sbin/nologin $(TEST_USER); fi

$(VENV)/.installed: requirements.txt requirements-test.txt
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install -q --upgrade pip
	$(VENV_PY) -m pip install -q -r requirements-test.txt
	@touch $@

# Debian's nodejs comes without npm (NodeSource's bundles it).
$(NPM_TOOLS)/node_modules/.installed: $(NPM_TOOLS)/package.json $(NPM_TOOLS)/package-lock.json
	@command -v npm >/dev/null || { echo "installing Debian's npm"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm; }
	npm ci --prefix $(NPM_TOOLS) --no-audit --no-fund --loglevel=error
	@touch $@

test: deps
	$(VENV_PY) -m pytest --durations=25

# The read-only checks of a deployment (tests/appliance/checks/): over SSH as the inventory
# connects, and over HTTPS from here. ARGS passes options to Ansible, e.g. --ask-vault-pass.
INVENTORY ?= inventory/local
check: $(VENV)/.installed
	$(VENV_PY) -m tests.support.deployment $(INVENTORY) $(ARGS)

docs: $(VENV)/.installed
	$(VENV_PY) -m tests.support.configuration_doc

dev: deps
	$(VENV_PY) -m tests.support.devstack

bench: deps
	$(VENV_PY) -m tests.bench.run

# The API fuzzing of `make test` (tests/app/test_fuzz.py), longer: FUZZ_MAX_EXAMPLES per operation and phase.
FUZZ_MAX_EXAMPLES ?= 500
fuzz: deps
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) $(VENV_PY) -m pytest -s tests/app/test_fuzz.py

vps: deps
	$(VENV_PY) -m tests.localvps up

# The local cluster: a web host, two app hosts and a database host on one bridge (.vps/cluster.json).
vps-cluster: deps
	$(VENV_PY) -m tests.localvps cluster

# Re-deploy the checkout (or SOURCE=<dir>, another tree of this project) to the running local VPS;
# ARGS="-e name=value" passes further arguments to ansible-playbook.
vps-upgrade: deps
	$(VENV_PY) -m tests.localvps upgrade $(if $(SOURCE),--source $(SOURCE)) -- $(ARGS)

# A database backup of the running local VPS, now (playbooks/backup.yml).
vps-backup: deps
	$(VENV_PY) -m tests.localvps backup

# Restore the running local VPS's database (playbooks/restore.yml): BACKUP=latest or an object key.
vps-restore: deps
	$(VENV_PY) -m tests.localvps restore --backup "$(BACKUP)"

vps-down:
	@if [ -x $(VENV_PY) ]; then $(VENV_PY) -m tests.localvps down; else echo "no venv: nothing was started"; fi
