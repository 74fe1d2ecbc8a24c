# The two commands of the README (both as root on a fresh Debian 12 machine):
#   make demo   - installs what mailprov needs, then runs the embedded default (lab + apply + verify)
#   make test   - installs what the tests need, then runs lint and the whole test suite
PYTHON ?= python3

.PHONY: setup demo test lint unit integration e2e bench fuzz clean vagrant-box

setup:
	@bash scripts/setup.sh

demo: setup
	$(PYTHON) -m provisioner demo

lint:
	ruff check provisioner tests benchmarks
	ruff format --check provisioner tests benchmarks
	mypy provisioner
	ANSIBLE_COLLECTIONS_PATH=collections ansible-lint --offline collections/ansible_collections/mailprov/mail playbooks
# --ignore-provider: a machine without VirtualBox/libvirt still validates the Vagrantfile itself
	vagrant validate --ignore-provider

test: setup lint
	$(PYTHON) -m pytest -ra -v --timeout=1200 tests

# The local Vagrant box mailprov/debian12 (libvirt, qemu/TCG), built from Debian packages and registered with
# `vagrant box add`; cached, rebuilt when its inputs change. Last line: `provider: libvirt`.
vagrant-box:
	@$(PYTHON) -m provisioner.vagrantbox build

unit:
	$(PYTHON) -m pytest -ra -q tests/unit

integration:
	$(PYTHON) -m pytest -ra -q tests/integration

e2e:
	$(PYTHON) -m pytest -ra -v tests/e2e

fuzz:
	HYPOTHESIS_PROFILE=fuzz $(PYTHON) -m pytest -ra -q tests/unit/test_trust_properties.py

bench:
	$(PYTHON) benchmarks/render_scale.py
	$(PYTHON) benchmarks/hostile_specs.py
	$(PYTHON) benchmarks/lab.py
	$(PYTHON) benchmarks/apply.py
	$(PYTHON) benchmarks/verify.py
