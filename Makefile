# podnet — `make test` is THE test command (README); .ci/run calls exactly it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PKGS := iproute2 iptables nftables ipset conntrack etcd-server bird2 \
	containernetworking-plugins tcpdump util-linux iputils-ping crun busybox-static
PYTEST_ARGS ?=

.PHONY: test deps deps-system deps-python lint unit netns bench clean up down

test: deps lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests netns_tests

deps: deps-system deps-python

deps-system:
	@missing=$$(for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

deps-python: $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'

lint:
	$(VENV)/bin/ruff check podnet cni flanneld calico_agent proxy controlplane tests netns_tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: deps
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

netns: deps
	$(PY) -m pytest -q $(PYTEST_ARGS) netns_tests

# a cluster on this machine, in network namespaces (podnet up --help); `make down` removes it
UP_ARGS ?= --nodes 3
up: deps
	$(VENV)/bin/podnet up $(UP_ARGS)

down:
	$(VENV)/bin/podnet down

bench: deps
	$(PY) bench/cni_latency.py --write docs/BENCHMARKS.md

clean:
	rm -rf $(VENV) build *.egg-info
