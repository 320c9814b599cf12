# rulestream — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/rulestream/target
CARGO ?= cargo
RULESTREAM := $(CARGO_TARGET_DIR)/debug/rulestream

.PHONY: test check fmt clippy unit schema validate-samples bench demo build

## make test: formatting, lints, and every test.
test: check unit validate-samples

## make check: fmt --check and clippy -D warnings.
check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Unit, table-driven, property, no-panic and CLI tests (nextest when installed).
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

build:
	$(CARGO) build -p rulestream-cli

## The CLI itself must accept every sample it ships.
validate-samples: build
	$(RULESTREAM) validate client-configs

## Regenerate client-configs/schema/flow.schema.json from the Rust model.
schema: build
	$(RULESTREAM) schema > client-configs/schema/flow.schema.json

## Criterion benchmarks; figures go to BENCHMARKS.md.
bench:
	$(CARGO) bench -p rulestream-core --bench engine

## Offline demo: validate and dry-run every sample flow on its examples.
demo: build
	bash scripts/demo-offline.sh
