# pgha: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/pgha
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
ARCH := $(shell dpkg --print-architecture)
DEB := pgha_$(VERSION)_$(ARCH).deb

.PHONY: all build deps pgversions unit integration test check-fmt clean deb lint-deb e2e e2e-bookworm e2e-trixie demo demo-clean

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

# The .deb: cargo builds the binary, dpkg-buildpackage only packages it (debian/rules says why).
# It runs in a copy of the tree under build/, so its output does not land in the parent directory;
# the versioned file and pgha.deb are copied to the top of the tree.
deb: build
	rm -rf build/deb && mkdir -p build/deb/pgha
	tar --exclude=./target --exclude=./build --exclude=./.git --exclude='./pgha*.deb' -cf - . | tar -C build/deb/pgha -xf -
	cd build/deb/pgha && PGHA_BIN=$(RELEASE_BIN) dpkg-buildpackage -b -us -uc >../build.log 2>&1 \
		|| { tail -40 ../build.log; exit 1; }
	cp build/deb/$(DEB) $(DEB)
	cp $(DEB) pgha.deb
	@echo "built $(DEB) and pgha.deb"

# lintian on the .deb: fails on any error or warning, prints the summary.
lint-deb: deb
	tests/lint-deb.sh $(DEB)

# Two systemd-nspawn hosts per distribution, through the user's path (tests/e2e/nspawn.sh).
e2e: e2e-bookworm e2e-trixie

e2e-bookworm: deb
	tests/e2e/nspawn.sh bookworm pgha.deb

e2e-trixie: deb
	tests/e2e/nspawn.sh trixie pgha.deb

test: deps check-fmt unit integration lint-deb e2e

# The demo needs the Debian packages only, not the other PostgreSQL majors of `make pgversions`.
demo:
	.ci/install-deps
	$(MAKE) deb
	tests/e2e/demo.sh up

demo-clean:
	tests/e2e/demo.sh down

clean:
	rm -rf build pgha.deb pgha_*.deb
	$(CARGO) clean
