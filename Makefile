# Quorate — one-command setup, build, tests and measurements.
# `make test` is the project's one test command (CI runs it through .ci/run).

SHELL := /bin/bash
CARGO ?= cargo
# System packages the build (libtss2-dev, pkg-config) and the tests (swtpm,
# swtpm-tools, tpm2-tools; iproute2 for the netfault tests' namespaces;
# man-db and python3-venv for the package and API contract tests) need.
APT_PACKAGES := libtss2-dev swtpm swtpm-tools tpm2-tools pkg-config iproute2 man-db python3-venv

# Tools the tests run, kept under target/tools: promtool (unpacked from
# Debian's prometheus package: installing that package would start a
# Prometheus server, and with its recommends a node exporter, on the test
# machine), schemathesis (PyPI, in a venv). cargo-deb goes to ~/.cargo/bin.
TOOLS_DIR := target/tools
PROMTOOL := $(TOOLS_DIR)/promtool
SCHEMATHESIS := $(TOOLS_DIR)/schemathesis-venv/bin/schemathesis

.PHONY: all deps tools build test fmt clippy check deps-graph bench fuzz soak chaos demo netfault package clean

all: build

## deps: install the missing system packages with apt-get (only when missing).
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all present ($(APT_PACKAGES))"; exit 0; fi; \
	echo "deps: installing:$$missing"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else \
	  echo "deps: cannot install as $$(id -un) without root. Run this, then retry:" >&2; \
	  echo "  sudo apt-get update && sudo apt-get install -y$$missing" >&2; \
	  exit 1; \
	fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing \
	  || { echo "deps: apt-get failed; run: sudo apt-get update && sudo apt-get install -y$$missing" >&2; exit 1; }

## tools: cargo-deb, promtool and schemathesis, each only when missing.
tools: deps
	@mkdir -p $(TOOLS_DIR)
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	@if [ ! -x $(PROMTOOL) ]; then \
	  if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $(PROMTOOL); \
	  else \
	    echo "tools: promtool from Debian's prometheus package"; \
	    d=$$(mktemp -d) && cd $$d && \
	    { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } && \
	    dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > $(CURDIR)/$(PROMTOOL).part && \
	    chmod 755 $(CURDIR)/$(PROMTOOL).part && mv $(CURDIR)/$(PROMTOOL).part $(CURDIR)/$(PROMTOOL); \
	    rc=$$?; cd $(CURDIR); rm -rf $$d; exit $$rc; \
	  fi; \
	fi
	@if [ ! -x $(SCHEMATHESIS) ]; then \
	  echo "tools: schemathesis (PyPI) into $(TOOLS_DIR)/schemathesis-venv"; \
	  rm -rf $(TOOLS_DIR)/schemathesis-venv && python3 -m venv $(TOOLS_DIR)/schemathesis-venv && \
	  $(TOOLS_DIR)/schemathesis-venv/bin/pip install -q 'schemathesis>=4,<5'; \
	fi

## build: release build of the `quorate` binary (target/release/quorate).
build: deps
	$(CARGO) build --release --locked -p quorate-host --bin quorate

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## deps-graph: the TPM-format verifier an auditor builds (quorate-attestation)
## must not pull in the consensus core: no quorate-firmware, no malachite crate
## among its normal dependencies (DESIGN.md, Layout). Reads Cargo.lock only.
deps-graph:
	@tree=$$($(CARGO) tree --locked -p quorate-attestation -e normal --prefix none) || exit 1; \
	bad=$$(grep -E '^(quorate-firmware|[a-z0-9_-]*malachite[a-z0-9_-]*) ' <<<"$$tree" | sort -u); \
	if [ -n "$$bad" ]; then \
	  echo "deps-graph: quorate-attestation depends on the consensus core through:" >&2; \
	  echo "$$bad" >&2; \
	  echo "deps-graph: shared types belong in types/ (quorate-types); see DESIGN.md, Layout" >&2; \
	  exit 1; \
	fi; \
	echo "deps-graph: quorate-attestation: $$(sed "s/ (\*)$$//" <<<"$$tree" | sort -u | wc -l) crates, no quorate-firmware, no malachite"

## test: the one test command: deps, format, lints with warnings as errors,
## the dependency-graph check, every test.
## The long network-fault tests (netfault_long::) are left to `make netfault`;
## the shortest one runs here.
test: deps tools fmt deps-graph clippy
	TSS2_LOG=all+none PROMTOOL=$(CURDIR)/$(PROMTOOL) SCHEMATHESIS=$(CURDIR)/$(SCHEMATHESIS) \
	  $(CARGO) test --workspace --locked --no-fail-fast -- --skip netfault_long::

## netfault: every network-fault test (parties in their own network
## namespaces behind the fault proxy; needs root), one at a time.
netfault: deps
	$(CARGO) build --locked -p quorate-host --bin quorate
	TSS2_LOG=all+none $(CARGO) test --locked -p quorate-tests --test netfault -- --test-threads=1

## package: the Debian package target/debian/quorate_<version>-1_<arch>.deb
## (cargo-deb): the binary, a man page per subcommand and shell completions
## (from `quorate generate-docs`), the hardened systemd unit, the example
## config, the alerting rules and the dashboard.
package: build
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	rm -rf target/package
	./target/release/quorate generate-docs --out-dir target/package
	$(CARGO) deb -p quorate-host --no-build

## bench: measurements, printed as tables (never timing assertions in tests).
bench: deps
	$(CARGO) build --release --locked -p quorate-host --bin quorate
	TSS2_LOG=all+none $(CARGO) run --release --locked -p quorate-tests --bin quorate-bench

## fuzz: run each cargo-fuzz target briefly (FUZZ_SECONDS each, default 30).
## Installs cargo-fuzz when missing; the stable toolchain accepts the
## nightly flags it passes with RUSTC_BOOTSTRAP=1.
FUZZ_TARGETS := tpms_attest tpmt_public event_log evidence audit_bundle witness_request mpc_messages api_bodies
FUZZ_SECONDS ?= 30
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done
## soak: the consensus simulation over 100,000 seeds (release build), and
## each named adversary model over 1/500 of them, one line per model, then a
## party down for 5,000 heights rejoining from the others' stores. A failing
## seed prints the one-line command that reproduces it.
soak:
	QUORATE_SIM_SEEDS=$${QUORATE_SIM_SEEDS:-100000} $(CARGO) test --release --locked -p quorate-firmware --features sim --test sim -- seeds_part --nocapture
	QUORATE_SIM_OUTAGE_HEIGHTS=5000 $(CARGO) test --release --locked -p quorate-firmware --features sim --test sim -- thousands_of_heights --nocapture
## chaos: the process-level fault suite: a 4-party cluster under API load,
## a random party killed with SIGKILL and restarted, 50 cycles; then every
## accepted operation executed exactly once, no equivocation, identical logs
## and roots (`make test` runs 4 cycles). QUORATE_CHAOS_SEED replays one.
## The daemons are the release build: a restart replays the chain from
## height 1, which in a debug build passed the suite's 60 s restart bound
## after about 40 cycles of load (release: 3 s for 120,000 log entries).
chaos: deps
	$(CARGO) build --release --locked -p quorate-host --bin quorate
	QUORATE_BIN=$(CURDIR)/target/release/quorate QUORATE_CHAOS_CYCLES=$${QUORATE_CHAOS_CYCLES:-50} TSS2_LOG=all+none $(CARGO) test --locked -p quorate-tests --test chaos -- --nocapture
## demo: build, start a 4-party dev cluster (each party with its own swtpm)
## and walk through the mission; exits non-zero if a step fails.
demo: deps
	$(CARGO) build --release --locked -p quorate-host --bin quorate -p quorate-tests --bin quorate-demo
	TSS2_LOG=all+none ./target/release/quorate-demo

clean:
	$(CARGO) clean
