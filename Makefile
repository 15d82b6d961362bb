# Two entry points do all the set-up on a fresh Debian machine (run as root):
#   make lab    a three-node container lab converged by the site playbook, checked with packets, left up
#   make test   lint, sanity, unit tests and every molecule scenario
# make help lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
BIN         := $(CURDIR)/$(VENV)/bin
PYTHON      ?= python3
COLLECTIONS := $(CURDIR)/.collections
COLLECTION  := $(COLLECTIONS)/ansible_collections/nodenet/nat
# openssh-client: the rollback scenario's controller reaches its nodes over ssh.
APT_PACKAGES := podman runc debootstrap iptables nftables conntrack iproute2 kmod make git shellcheck openssh-client
# molecule/default is an empty stub (see its molecule.yml), not a scenario to run.
SCENARIOS   ?= $(filter-out default,$(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))

export CONTAINERS_CONF := $(CURDIR)/tests/lab/containers.conf
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PATH := $(BIN):$(PATH)
# Where the scenarios are (molecule would otherwise warn that a collection's belong in extensions/molecule).
export MOLECULE_GLOB := molecule/*/molecule.yml

.PHONY: help setup packages venv collection image test lint ee changelog-lint changelog examples sanity unit molecule \
	lab lab-check lab-down demo bench-fleet build clean

help:
	@echo "Entry points (each installs what it needs: Debian packages, .venv, the node image):"
	@echo "  make lab           3 nodes (nft, iptables-nft, iptables-legacy), a client and an upstream host in"
	@echo "                     containers; site.yml, packet checks and a PASS/FAIL report; the lab stays up"
	@echo "  make lab-check     send the lab's packets again and print the report"
	@echo "  make lab-down      remove the lab's containers and lab/"
	@echo "  make demo          the same as make lab"
	@echo "  make test          lint, sanity, unit, molecule: what CI runs"
	@echo "Finer targets:"
	@echo "  make lint          ansible-lint --profile production, after ee, changelog-lint and examples"
	@echo "  make ee            execution environment: ansible-builder introspect and create (build/ee/)"
	@echo "  make changelog-lint  antsibull-changelog lint; CHANGELOG.md matches changelogs/"
	@echo "  make changelog     regenerate CHANGELOG.md from changelogs/"
	@echo "  make examples      examples/inventory parses and passes the roles' argument specs"
	@echo "  make sanity        ansible-test sanity"
	@echo "  make unit          pytest tests/unit"
	@echo "  make molecule      molecule scenarios, MOLECULE_JOBS=$(MOLECULE_JOBS) at a time: $(SCENARIOS)"
	@echo "                     one of them: make molecule SCENARIOS=forwarding (logs: build/molecule/)"
	@echo "  make bench-fleet   site.yml on FLEET_HOSTS node containers with FLEET_FORKS forks (bench/FLEET.md)"
	@echo "  make build         build/nodenet-nat-$(VERSION).tar.gz"
	@echo "  make setup         Debian packages, .venv, the .collections link, the node image (make image)"
	@echo "  make clean         remove build/ and .collections"

setup: packages venv collection image

packages:
	@missing=""; for bin in podman runc debootstrap nft iptables-legacy conntrack ip modprobe git shellcheck ssh; do \
	    command -v $$bin >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; fi

venv: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r tests/requirements.txt
	touch $@

# The repository root is the collection root; ansible finds it through this link.
collection:
	@mkdir -p $(dir $(COLLECTION)) && ln -sfn $(CURDIR) $(COLLECTION)

image: packages
	bash tests/lab/build-image.sh

lint: venv collection ee changelog-lint examples
	ansible-lint --profile production

VERSION := $(shell awk '/^version:/ {print $$2}' galaxy.yml)
# The execution environment: the collection tarball must carry meta/execution-environment.yml, bindep.txt and
# requirements.txt, ansible-builder must read the system packages from them (introspect, as it does inside an
# image build), and examples/execution-environment.yml must give a build context (create writes it, builds nothing).
ee: build
	rm -rf build/ee
	ANSIBLE_COLLECTIONS_PATH=$(CURDIR)/build/ee/collections \
	    ansible-galaxy collection install --offline --force -p build/ee/collections build/nodenet-nat-$(VERSION).tar.gz
	ansible-builder introspect --sanitize build/ee/collections > build/ee/dependencies.yml
	grep -q "^- 'nftables .*from collection nodenet.nat" build/ee/dependencies.yml
	grep -q "nodenet-nat-$(VERSION).tar.gz" examples/execution-environment.yml
	ansible-builder create -f examples/execution-environment.yml --context build/ee/context
	test -s build/ee/context/_build/collections/nodenet-nat-$(VERSION).tar.gz

# Changelog fragments and changelogs/changelog.yaml are valid, and CHANGELOG.md is what they generate.
changelog-lint: venv collection
	antsibull-changelog lint
	antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml
	mkdir -p build && antsibull-changelog generate --output build/CHANGELOG.md --output-format md
	diff -u CHANGELOG.md build/CHANGELOG.md || { echo "CHANGELOG.md is stale: run make changelog"; exit 1; }

# Regenerate CHANGELOG.md (a release: antsibull-changelog release --version X.Y.Z, then this).
changelog: venv collection
	antsibull-changelog generate

# The example inventory parses, and its variables pass the roles' argument specs.
examples: venv collection
	ansible-inventory -i examples/inventory --graph >/dev/null
	ansible-playbook -i examples/inventory playbooks/site.yml --syntax-check >/dev/null
	python tests/check_inventory.py examples/inventory

# ansible-test wants the collection at .../ansible_collections/nodenet/nat: sanity runs on a copy of the work tree's files.
# Its own venv: ansible-test pins the sanity tools it installs (--requirements, from PyPI), which must not
# disturb the test tools. (--venv would download a pip bootstrap script from outside the package registries.)
SANITY_VENV := $(CURDIR)/.venv-sanity
$(SANITY_VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install -q --upgrade pip
	$(SANITY_VENV)/bin/pip install -q $$(grep '^ansible-core==' tests/requirements.txt)
	touch $@

# ansible-test names the bootstrap script after the pip version it pins for virtual environments.
PIP_BOOTSTRAP = $(HOME)/.ansible/test/cache/get_pip_$(subst .,_,$(shell $(SANITY_VENV)/bin/python -c \
	'from ansible_test._internal.python_requirements import get_venv_packages; import types; print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])')).py

sanity: $(SANITY_VENV)/.installed
	mkdir -p $(dir $(PIP_BOOTSTRAP)) && cp .ci/get-pip.py $(PIP_BOOTSTRAP)
	rm -rf build/sanity && mkdir -p build/sanity/ansible_collections/nodenet/nat
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t build/sanity/ansible_collections/nodenet/nat/
	cd build/sanity/ansible_collections/nodenet/nat && git init -q && git add -A && \
	    PATH=$(SANITY_VENV)/bin:$$PATH ansible-test sanity --requirements --python 3.11 --color no

unit: venv collection
	$(BIN)/python -m pytest -q tests/unit

# Scenarios run MOLECULE_JOBS at a time (their containers have distinct names). Each prints a line as each
# molecule action starts and ends; its whole output goes to build/molecule/NAME.log and is printed if it fails.
MOLECULE_JOBS ?= 2
molecule: setup
	@echo "molecule scenarios, $(MOLECULE_JOBS) at a time: $(SCENARIOS)"
	$(MAKE) --no-print-directory -j$(MOLECULE_JOBS) $(addprefix molecule-,$(SCENARIOS))

molecule-%:
	@bash tests/molecule-scenario.sh $*

test: setup lint sanity unit molecule

# The lab (tests/lab/labctl.py): three nodes (nft, iptables-nft, iptables-legacy), a client and an upstream host
# in containers, converged by site.yml and checked with packets; it stays up until make lab-down.
lab: setup
	$(BIN)/python tests/lab/labctl.py up

lab-check: venv collection
	$(BIN)/python tests/lab/labctl.py check

lab-down:
	$(PYTHON) tests/lab/labctl.py down

demo: lab

# site.yml over FLEET_HOSTS node containers, once per fork count, against ceil(H/F) x one node (bench/FLEET.md).
FLEET_HOSTS ?= 24
FLEET_FORKS ?= 2,6
bench-fleet: setup
	$(BIN)/python bench/fleet.py --hosts $(FLEET_HOSTS) --forks $(FLEET_FORKS) --output bench/FLEET.md

build: venv
	ansible-galaxy collection build --force --output-path build/
	@echo "install it with: ansible-galaxy collection install build/nodenet-nat-$(VERSION).tar.gz"

clean:
	rm -rf build $(COLLECTIONS)
