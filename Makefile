# pamsite: `make run` (the embedded dev stack) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

# Build headers for python-ldap (needed to install the requirements at all).
APT_BUILD := libldap2-dev libsasl2-dev
# The real servers the tests start: slapd, sshd, Chromium; oathtool checks our TOTP codes.
APT_TEST := slapd ldap-utils openssh-server chromium oathtool
# Samba AD DC, the real Active Directory (installed without recommends, its services left off:
# scripts/apt-ensure-samba).
APT_AD := samba-ad-dc samba-ad-provision
# make demo's PACS host is an OpenSSH sshd (the ssh client comes with it).
APT_DEMO := openssh-server

.PHONY: run demo apt-demo test lint format check-deploy pytest bench deps apt-build apt-test clean

# PAMSITE_DEMO=1 make run is make demo.
run: deps $(if $(filter 1,$(PAMSITE_DEMO)),apt-demo)
	$(PY) scripts/devstack.py

# make run plus a demo PACS host, three users and a policy (README: "Try it in ten minutes").
demo: deps apt-demo
	PAMSITE_DEMO=1 $(PY) scripts/devstack.py

test: deps apt-test lint check-deploy pytest

deps: apt-build $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

apt-build:
	@scripts/apt-ensure $(APT_BUILD)

apt-test:
	@scripts/apt-ensure $(APT_TEST)
	@scripts/apt-ensure-samba $(APT_AD)

apt-demo:
	@scripts/apt-ensure $(APT_DEMO)

lint: deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/bandit -q -c pyproject.toml -r common pamsite identity audit vault targets access recordings gateway web
	# The layers (DESIGN.md) and one door per outside system: pyproject.toml [tool.importlinter].
	$(VENV)/bin/lint-imports --no-cache

format: deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Production settings must pass Django's deployment checklist with no warning.
check-deploy: deps
	PAMSITE_MODE=production \
	SECRET_KEY=check-deploy-$$(head -c 48 /dev/urandom | base64 | tr -d '/+=\n') \
	ALLOWED_HOSTS=pamsite.example.org \
	VAULT_ROLE_ID=check-deploy VAULT_SECRET_ID=check-deploy \
	DATABASE_URL=sqlite:///$(CURDIR)/var/check-deploy.sqlite3 \
	$(PY) manage.py check --deploy --fail-level WARNING

# Both cores (pytest-xdist): --dist loadgroup keeps each xdist_group, such as the tests of the
# one Samba AD DC a machine can run, in one worker. PYTEST_WORKERS=0 runs in this process.
# Bytecode (with pytest's rewritten asserts) is kept in var/pycache even where the shell says
# PYTHONDONTWRITEBYTECODE: compiling the suite again costs every run, each worker and each
# process the tests start (the gateway, the worker) tens of seconds.
PYTEST_WORKERS ?= 2
pytest: deps
	env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/var/pycache \
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# make bench BENCH_ARGS="--quick" (or "--baseline DIR"): see bench/run.py.
bench: deps apt-test
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf var/ test-artifacts/
