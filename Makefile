# pgha's entry points. `make test` is what CI (.ci/run) calls: it installs the prerequisites,
# then runs every test, the nspawn end-to-end test included.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
RELEASE_BIN := $(CARGO_TARGET_DIR)/release/pgha
VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
ARCH := $(shell dpkg --print-architecture)
DEB := pgha_$(VERSION)_$(ARCH).deb

# Debian packages the build and the tests need (the Rust toolchain is rustup's, see README).
TEST_PACKAGES := postgresql-15 postgresql-client-15 iproute2 debhelper po-debconf dpkg-dev lintian \
	mmdebstrap systemd-container debian-archive-keyring ucf debconf util-linux

.PHONY: all deps build release unit integration e2e e2e-bookworm e2e-trixie test deb lint-deb demo demo-clean clean

all: build

deps:
	@missing=$$(for p in $(TEST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "deps: all installed"; fi

build:
	$(CARGO) build

release:
	$(CARGO) build --release

unit:
	$(CARGO) test --bins

integration:
	$(CARGO) test --test integration

# The .deb: cargo builds the binary, dpkg-buildpackage packages it (debian/rules explains why),
# in a copy of the tree under build/ so its output does not land in the parent directory.
deb: release
	rm -rf build/deb && mkdir -p build/deb/pgha
	tar --exclude=./target --exclude=./build --exclude=./.git --exclude='./pgha*.deb' -cf - . | tar -C build/deb/pgha -xf -
	cd build/deb/pgha && PGHA_BIN=$(RELEASE_BIN) dpkg-buildpackage -b -us -uc >../build.log 2>&1 \
		|| { tail -40 ../build.log; exit 1; }
	cp build/deb/$(DEB) $(DEB)
	cp $(DEB) pgha.deb
	@echo "built $(DEB) and pgha.deb"

lint-deb: deb
	tests/lint-deb.sh $(DEB)

e2e: e2e-bookworm e2e-trixie

e2e-bookworm: deb
	tests/e2e/nspawn.sh bookworm

e2e-trixie: deb
	tests/e2e/nspawn.sh trixie

test: deps
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) lint-deb
	$(MAKE) e2e

demo: deps deb
	tests/e2e/demo.sh up

demo-clean:
	tests/e2e/demo.sh down

clean:
	rm -rf build pgha.deb pgha_*.deb
	$(CARGO) clean
