# astara developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: image-built deps venv test unit fuzz lower-bounds lock lock-upgrade lab lab-qemu lab-down bench \
	bench-image leftovers image image-test test-qemu-lab clean distclean

# Debian packages (needs root when something is missing) + .venv. --image: also what
# building and booting the appliance image needs (debootstrap, qemu, genisoimage, ssh...).
deps:
	bash scripts/install-deps --image

# Only the virtualenv (no apt, no root needed).
venv:
	bash scripts/install-deps --no-apt

# As root, builds the image unless out/ holds the current one (3-8 min), so test/image
# boots the image this tree describes, and a missing image then fails test/image
# (ASTARA_REQUIRE_IMAGE) instead of skipping it. Without root (diskimage-builder needs it)
# no image is built and the image tests skip, like every namespace test. Only the QEMU lab
# end to end (~20 min) is left out: make test-qemu-lab.
ROOT := $(filter 0,$(shell id -u))
test: deps $(if $(ROOT),image-built)
	$(if $(ROOT),ASTARA_REQUIRE_IMAGE=1) $(PY) -m pytest -q test --ignore=test/e2e/test_lab_qemu.py

unit: venv
	$(PY) -m pytest -q test/unit

# The fuzz tests (README, "Fuzzing and load") with 10 000 cases instead of make test's 2 000.
fuzz: deps
	ASTARA_FUZZ_CASES=10000 $(PY) -m pytest -q test/functional/test_fuzz_agent.py \
		test/functional/test_fuzz_orchestrator.py

# The lower bounds of requirements*.txt, exactly, in a scratch venv
# (.venv-lower-bounds, made anew each run), and the unit tests on them. Every
# lower bound is a version this has passed on. LOWER_BOUNDS_TESTS=... runs others.
lower-bounds:
	bash scripts/lower-bounds $(LOWER_BOUNDS_TESTS)

# The lock files (pip-compile, needs the package index): locks/agent.txt is the
# agent's runtime set (what the image installs), locks/dev.txt the dev venv's
# (agent + orchestrator + lab + test tools), held to the agent's pins. `lock`
# keeps every pin that still satisfies requirements*.txt; `lock-upgrade` takes
# the newest versions.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: venv
	$(PIP_COMPILE) $(LOCK_ARGS) --output-file locks/agent.txt requirements.txt
	$(PIP_COMPILE) $(LOCK_ARGS) --constraint locks/agent.txt --output-file locks/dev.txt \
		requirements.txt orchestrator-requirements.txt test-requirements.txt

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

lab: deps
	$(VENV)/bin/astara-lab up

# The same cloud with the router as a VM of out/astara.qcow2 (astara-lab up builds it first
# if missing or stale, shows the build's progress and records its time).
lab-qemu: deps
	$(VENV)/bin/astara-lab up --driver qemu

lab-down:
	$(VENV)/bin/astara-lab down

bench: deps
	$(PY) test/bench/run_bench.py
	$(PY) test/bench/bench_orchestrator.py
	$(PY) test/bench/bench_lab.py
	$(PY) test/bench/bench_neutron_events.py
	$(PY) test/bench/bench_loadbalancer.py
	$(PY) test/bench/bench_ha.py
	$(PY) test/bench/bench_cluster.py
	$(PY) test/bench/bench_image.py

# Image build time and size, an appliance VM's boot-to-configured time, the QEMU lab's
# up-to-green time (BENCHMARKS.md, "Image and VM appliances"). Rebuilds the image.
bench-image: deps
	$(PY) test/bench/bench_image.py

leftovers:
	$(VENV)/bin/astara-leftovers --remove

# Build the appliance image unless out/ holds one built from the current inputs
# (astara_lab/image.py); FORCE=1 rebuilds anyway.
image: deps image-built

image-built:
	$(PY) -m astara_lab.image ensure $(if $(FORCE),--force)

# Only the image's own tests (make test runs them too): boot the built image under QEMU
# (TCG) and drive it like the orchestrator does; builds the image first if missing or stale.
image-test: deps image-built
	ASTARA_REQUIRE_IMAGE=1 $(PY) -m pytest -v -s test/image

# The QEMU lab end to end (several minutes): every lab row with the router as a VM,
# adoption by a restarted orchestrator, a rolling upgrade, astara-lab down. The image is
# built beforehand (up would build it too) so the test's "QEMU lab up in" leaves it out.
test-qemu-lab: deps image-built
	$(PY) -m pytest -v -s test/e2e/test_lab_qemu.py

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

# clean + the virtualenvs, built images and the diskimage-builder cache.
distclean: clean
	rm -rf $(VENV) .venv-lower-bounds out .dibcache
