# pgha: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
ARCH := $(shell dpkg --print-architecture)
DEB := pgha_$(VERSION)_$(ARCH).deb

.PHONY: all build deps pgversions unit integration test check-fmt check-copyright clean deb deb-trixie lint-deb e2e e2e-bookworm e2e-trixie demo demo-clean

all: build

build:
	$(CARGO) build --release --locked

# Everything the tests need, installed idempotently (apt-get and cargo; npm for pgversions).
deps:
	.ci/install-deps
	tests/pgversions/install.sh

# PostgreSQL servers 10-18 besides Debian's 15, as Debian versions, for tests/integration/versions.rs.
pgversions:
	tests/pgversions/install.sh

unit:
	$(CARGO) test --locked --bins

# Real PostgreSQL clusters and network namespaces: needs root.
integration:
	$(CARGO) test --locked --test integration -- --test-threads=2

check-fmt:
	$(CARGO) fmt --check

# The .deb, built as Debian builds it: dpkg-buildpackage in a clean chroot of the distribution
# with only the Build-Depends, offline, from vendored crates (debian/build-in-chroot.sh). No
# Rust toolchain on the host is involved. The bookworm package is pgha.deb (and the versioned
# name) at the top of the tree; the trixie one is pgha-trixie.deb. Each is rebuilt only when a
# file git tracks changed since.
# The bookworm build skips the unit tests, which `make unit` runs just before in `make test`;
# the trixie build runs them with the oldest compiler pgha supports (rust-version).
SOURCES := $(wildcard $(shell git ls-files 2>/dev/null))
DEB_OPTIONS_bookworm ?= nocheck parallel=2
DEB_OPTIONS_trixie ?= parallel=2

deb: pgha.deb

deb-trixie: pgha-trixie.deb

pgha.deb: $(SOURCES) | check-copyright
	DEB_BUILD_OPTIONS="$(DEB_OPTIONS_bookworm)" debian/build-in-chroot.sh bookworm build/deb-bookworm
	cp build/deb-bookworm/$(DEB) $(DEB)
	cp $(DEB) pgha.deb
	@echo "built $(DEB) and pgha.deb (bookworm)"

pgha-trixie.deb: $(SOURCES) | check-copyright
	DEB_BUILD_OPTIONS="$(DEB_OPTIONS_trixie)" debian/build-in-chroot.sh trixie build/deb-trixie
	cp build/deb-trixie/$(DEB) pgha-trixie.deb
	@echo "built pgha-trixie.deb"

# debian/copyright names every crate of Cargo.lock: the package is built from them.
check-copyright:
	tests/copyright.sh

# lintian on the .deb: fails on any error or warning, prints the summary.
lint-deb: deb
	tests/lint-deb.sh $(DEB)

# Two systemd-nspawn hosts per distribution, through the user's path (tests/e2e/nspawn.sh).
e2e: e2e-bookworm e2e-trixie

e2e-bookworm: deb
	tests/e2e/nspawn.sh bookworm pgha.deb

e2e-trixie: deb-trixie
	tests/e2e/nspawn.sh trixie pgha-trixie.deb

test: deps check-fmt check-copyright unit integration lint-deb e2e

# The demo needs the Debian packages that build and boot the hosts: no Rust, no PostgreSQL on
# the host, not the other PostgreSQL majors of `make pgversions`.
demo:
	.ci/install-deps --demo
	$(MAKE) deb
	tests/e2e/demo.sh up

demo-clean:
	tests/e2e/demo.sh down

clean:
	rm -rf build pgha.deb pgha-trixie.deb pgha_*.deb
	! command -v $(CARGO) >/dev/null || $(CARGO) clean
