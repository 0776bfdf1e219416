# astara developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: deps venv test unit lab lab-down bench leftovers image image-test clean distclean

# Debian packages (needs root when something is missing) + .venv.
deps:
	bash scripts/install-deps

# Only the virtualenv (no apt, no root needed).
venv:
	bash scripts/install-deps --no-apt

test: deps
	$(PY) -m pytest -q test

unit: venv
	$(PY) -m pytest -q test/unit

lab: deps
	$(VENV)/bin/astara-lab up

lab-down:
	$(VENV)/bin/astara-lab down

bench: deps
	$(PY) test/bench/run_bench.py
	$(PY) test/bench/bench_orchestrator.py
	$(PY) test/bench/bench_lab.py
	$(PY) test/bench/bench_cluster.py

leftovers:
	$(VENV)/bin/astara-leftovers --remove

image:
	bash scripts/install-deps --image
	bash scripts/build-image

# Boot the built image under qemu (TCG) and drive it like the orchestrator does; builds
# the image first if out/ has none. Slow (minutes), so not part of `make test`.
IMAGE_OUT := out/$(or $(ASTARA_IMAGE_NAME),astara)
image-test:
	bash scripts/install-deps --image
	@if [ ! -f $(IMAGE_OUT).qcow2 ] || [ ! -f $(IMAGE_OUT).vmlinuz ] || \
			[ ! -f $(IMAGE_OUT).initrd ]; then \
		echo "image-test: no image at $(IMAGE_OUT).qcow2, building it"; \
		bash scripts/build-image; \
	fi
	ASTARA_IMAGE_TEST=1 $(PY) -m pytest -v -s test/image

# Build and test debris. Refuses to touch .dibtmp while a failed image build
# still has something mounted below it (rm -rf would follow into /dev, /proc...).
clean:
	@if grep -qF " $(CURDIR)/.dibtmp" /proc/self/mounts; then \
		echo "clean: mounts left under $(CURDIR)/.dibtmp; unmount them first:" >&2; \
		grep -F " $(CURDIR)/.dibtmp" /proc/self/mounts | cut -d' ' -f2 >&2; \
		exit 1; \
	fi
	rm -rf build dist .dibtmp .pytest_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# clean + the virtualenv, built images and the diskimage-builder cache.
distclean: clean
	rm -rf $(VENV) out .dibcache
