# lamina: every target is idempotent and works from a fresh clone as root.
SHELL := /bin/bash
PYTHON_BASE ?= /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv python3-dev docker-registry skopeo umoci busybox-static \
	qemu-system-x86 linux-image-cloud-amd64 erofs-utils e2fsprogs cpio zstd lz4 gcc libc6-dev debootstrap \
	runc conmon catatonit podman buildah netavark aardvark-dns iperf3 apache2-utils openssl ca-certificates curl docker-compose \
	haproxy pebble podman-compose wrk \
	qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# Guest kernels for micro-VMs of foreign architectures (arm64 images on this amd64 host).
GUEST_ARCHES := arm64
GUEST_DIR := /usr/local/lib/lamina/guest
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint typecheck clean

$(VENV)/.installed: pyproject.toml Makefile scripts/guest-kernel
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@for a in $(GUEST_ARCHES); do test -d $(GUEST_DIR)/$$a || scripts/guest-kernel $$a; done
	@test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# Byte-compile lamina's sources: with PYTHONDONTWRITEBYTECODE set (as on some hosts)
# Python would otherwise recompile every module on every CLI start.
setup: $(VENV)/.installed
	@$(PY) -m compileall -q src >/dev/null

demo: setup
	$(PY) examples/demo.py

# Two workers, a test file each at a time (module fixtures stay whole): most of a test's
# time is spent waiting on containers, VMs and daemons, not on a core.
PYTEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: setup
	$(PY) bench/run.py

lint: setup
	$(VENV)/bin/ruff check src tests bench examples

typecheck: setup
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build src/*.egg-info
