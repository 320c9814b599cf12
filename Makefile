# rulestream — the two commands that matter: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/rulestream/target
CARGO ?= cargo
RULESTREAM := $(CARGO_TARGET_DIR)/debug/rulestream

.PHONY: test check fmt clippy unit schema openapi validate-samples conformance template e2e bench bench-engine bench-peers bench-stack bench-load demo down build fuzz chaos

## make test: formatting, lints, every unit/table/property/CLI test, the CEL conformance tests,
## the template check, and the e2e suite on the local stack.
test: check unit validate-samples conformance template e2e

## make check: fmt --check and clippy -D warnings.
check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything but the e2e suite (nextest when installed).
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --exclude rulestream-e2e --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --exclude rulestream-e2e --no-fail-fast; \
	fi
	$(CARGO) test --workspace --exclude rulestream-e2e --doc

build:
	$(CARGO) build -p rulestream-cli -p orchestrator

## The CLI itself must accept every sample it ships.
validate-samples: build
	$(RULESTREAM) validate client-configs

## Regenerate client-configs/schema/flow.schema.json from the Rust model.
schema: build
	$(RULESTREAM) schema > client-configs/schema/flow.schema.json

## Regenerate docs/openapi.json (the sync API's OpenAPI 3.1 document) from its types.
openapi:
	$(CARGO) run -q -p sync-api -- --openapi > docs/openapi.json

## The CEL project's conformance tests (cel-spec's simple tests from npm's @bufbuild/cel-spec,
## installed under ~/.cache/rulestream) through `rulestream dry-run`; fails if the pass rate drops.
conformance: build
	@command -v npm >/dev/null || { echo "conformance: installing Node.js and npm (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q nodejs npm >/dev/null; else sudo apt-get install -y -q nodejs npm >/dev/null; fi; }
	python3 scripts/cel-conformance.py --rulestream $(RULESTREAM)

## SAM template: sam validate --lint, then cfn-lint on the transformed template.
template:
	bash scripts/check-template.sh

## The e2e suite on the real local stack (brings it up and down itself).
e2e: build
	bash localstack/e2e.sh

## The fuzz targets (flow JSON, CEL text, trigger-row images; corpus in shared/core/tests/corpus)
## at length, in release: FUZZ_CASES per target (a short run of the same targets is in `make unit`).
## A panic saves its input under $(CARGO_TARGET_DIR)/fuzz-failures/ and names the seed.
FUZZ_CASES ?= 200000
fuzz:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  RULESTREAM_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) nextest run --release -p rulestream-core \
	    --test no_panic --test chain -E 'test(never_panic)' --no-fail-fast; \
	else \
	  RULESTREAM_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p rulestream-core \
	    --test no_panic --test chain --no-fail-fast -- never_panic; \
	fi

## Chaos on the local stack: CHAOS_EXECUTIONS concurrent executions under random throttling of
## DynamoDB and S3 (the fault proxy) and double delivery; prints the reliability figures that
## BENCHMARKS.md reports. A short run (100) is part of `make test`. The stall bound is the
## production default (15 min): the local runner reads a shard one batch at a time, so a
## thousand executions queue longer than the e2e bound of 60 s.
CHAOS_EXECUTIONS ?= 1000
chaos: build
	RULESTREAM_STALL_SECS=900 RULESTREAM_CHAOS_EXECUTIONS=$(CHAOS_EXECUTIONS) RULESTREAM_E2E_FILTER='binary(chaos)' bash localstack/e2e.sh

## Benchmarks (figures in BENCHMARKS.md): criterion on the engine, the engine beside its peers
## (zen, cel, json-rules-engine; instructions counted by callgrind), then the chain on the local stack.
bench: bench-engine bench-peers bench-stack bench-load

bench-peers:
	bash scripts/bench-peers.sh

bench-engine:
	$(CARGO) bench -p rulestream-core --bench engine

bench-stack: build
	bash scripts/bench-stack.sh

## The chain under load: 200 executions kept in flight for 60 s (BENCHMARKS.md).
bench-load: build
	bash scripts/bench-stack.sh load

## Bring up the local stack and run the sample flows end to end as a client would.
demo: build
	bash scripts/demo.sh

## Stop everything the local-stack scripts started.
down:
	bash localstack/down.sh
