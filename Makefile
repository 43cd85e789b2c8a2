# pgha: the two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CARGO ?= cargo

.PHONY: all build deps unit integration test check-fmt clean

all: build

build:
	$(CARGO) build --release --locked

# Everything the tests need, installed idempotently (apt-get and cargo only).
deps:
	.ci/install-deps

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
