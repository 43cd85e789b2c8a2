# pgha: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CARGO ?= cargo

.PHONY: all build deps pgversions unit integration test check-fmt clean

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

test: deps check-fmt unit integration

clean:
	$(CARGO) clean
