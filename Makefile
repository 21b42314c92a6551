# Fleet telemetry pipeline.
#
#   make run        the whole pipeline in one process (embedded services), dashboard on :8080
#   make test       install what tests need, start the real services, run every test, stop them
#   make build      every binary into bin/, plus static edge agents for linux/arm64, arm/v7, amd64
#   make generate   regenerate proto/ Go code with the pinned generators
#   make lint       gofmt, go vet, staticcheck, buf lint, generated code up to date
#   make bench      benchmarks and load tools, written up in reports/bench.md
#   make services-up / services-down   the real services alone (Mosquitto, Kafka, MinIO)
#
# Tools are pinned and installed into .cache/bin (git-ignored) on first use.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
CACHE     := $(CURDIR)/.cache
TOOLS     := $(CACHE)/bin
export GOBIN := $(TOOLS)

BUF_VERSION           := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
STATICCHECK_VERSION   := v0.8.2

BINARIES := edge-agent bridge consumers/parquet-sink consumers/live-location consumers/replay compose/embedded
AGENT_PLATFORMS := linux/amd64 linux/arm64 linux/arm/v7

# Flags for `make run`, e.g. make run ARGS="--vehicles 200 --speedup 5".
ARGS ?=
# Extra flags for go test, e.g. make test TESTFLAGS="-run E2E -v".
TESTFLAGS ?=

.PHONY: help
help:
	@sed -n 's/^#   //p' $(MAKEFILE_LIST) | head -9

# Built, then exec'd rather than `go run` (go run exits 1 on Ctrl-C whatever
# the program does); --foreground makes the program the terminal's
# foreground group, so Ctrl-C does not kill make too: a clean stop exits 0.
.PHONY: run
run:
	@mkdir -p bin
	$(GO) build -o bin/embedded ./compose/embedded
	exec bin/embedded --foreground $(ARGS)

.PHONY: build
build:
	@mkdir -p bin
	@for b in $(BINARIES); do echo "go build $$b"; $(GO) build -trimpath -o bin/$$(basename $$b) ./$$b; done
	@for p in $(AGENT_PLATFORMS); do \
		os=$${p%%/*}; rest=$${p#*/}; arch=$${rest%%/*}; arm=""; \
		case $$rest in arm/v7) arm=7;; esac; \
		out=bin/edge-agent-$$os-$$arch$${arm:+v$$arm}; echo "go build $$out"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags='-s -w' -o $$out ./edge-agent; \
	done

# --- code generation -------------------------------------------------------

$(TOOLS)/buf-$(BUF_VERSION):
	@mkdir -p $(TOOLS)
	$(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@

$(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	@mkdir -p $(TOOLS)
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@

$(TOOLS)/staticcheck-$(STATICCHECK_VERSION):
	@mkdir -p $(TOOLS)
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

.PHONY: tools
tools: $(TOOLS)/buf-$(BUF_VERSION) $(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(TOOLS)/staticcheck-$(STATICCHECK_VERSION)

.PHONY: generate
generate: $(TOOLS)/buf-$(BUF_VERSION) $(TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
	$(TOOLS)/buf generate

# Regenerates and fails if that changed anything: generated code must be committed in sync.
.PHONY: check-generate
check-generate: generate
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
		echo "generated code is out of date; run 'make generate' and commit:"; git status --porcelain -- proto; git diff --stat -- proto; exit 1; fi
	@echo "generated code is up to date"

# --- checks ------------------------------------------------------------------

.PHONY: lint
lint: tools check-generate
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	$(TOOLS)/buf lint
	@echo "lint clean"

# --- real services -----------------------------------------------------------

.PHONY: services-up
services-up:
	compose/services.sh install
	compose/services.sh start

.PHONY: services-down
services-down:
	compose/services.sh stop

# --- tests -------------------------------------------------------------------

# Unit and integration tests (race detector, shuffled order) against the real
# services, which this target installs (once, cached under .cache/), starts
# with fresh state, and always stops. CI runs exactly this. Test artifacts
# (the dashboard's screenshot) land under .cache/test-output/_artifacts/.
.PHONY: test
test: lint
	compose/services.sh install
	@trap 'compose/services.sh stop' EXIT; \
	compose/services.sh start; \
	eval "$$(compose/services.sh env)"; \
	export FLEET_SHARED_DATA="$${FLEET_SHARED_DATA:-$(abspath $(CURDIR)/../shared/data)}"; \
	mkdir -p $(CACHE)/test-output; \
	$(GO) test -race -shuffle=on -timeout 30m -count=1 -artifacts -outputdir $(CACHE)/test-output $(TESTFLAGS) ./...

# Unit tests only, no services (integration tests skip with their reason).
.PHONY: test-short
test-short:
	$(GO) test -race -shuffle=on -count=1 $(TESTFLAGS) ./...

# Benchmarks and load tools; the report is reports/bench.md.
.PHONY: bench
bench:
	compose/loadtest/bench.sh

# A short run of every fuzz target (FUZZTIME each).
FUZZTIME ?= 30s
FUZZ_TARGETS := internal/wire:FuzzDecode internal/wire:FuzzParseCatalog internal/wire:FuzzValidVehicleID internal/mqttlite:FuzzReadPublish internal/entropy:FuzzDecode edge-agent/spool:FuzzRecordReader \
	edge-agent/spool:FuzzOpen edge-agent/can:FuzzParseDBC edge-agent/can:FuzzCandumpLine \
	edge-agent/gps:FuzzNMEALine edge-agent/gps:FuzzGPSDReport consumers/live-location/httpapi:FuzzQueryParameters \
	edge-agent/uplink:FuzzAck edge-agent/capture:FuzzCondition consumers/replay/replay:FuzzJSONFormatting
.PHONY: fuzz
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t#*:}; echo "fuzz $$pkg $$fn"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg/ || exit 1; done

.PHONY: clean
clean:
	rm -rf bin reports
