# ubiqo-bridge — developer and CI entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/ubiqo-bridge/ubiqo-bridge/config.Version=$(VERSION)
BINARIES := bridge persister alerter forwarder simulator
# Fuzz budget per target in `make test` (brief) and `make fuzz` (long).
# Both are counts of executions (a few seconds, and about two minutes per
# target here), not durations: Go 1.26's fuzz coordinator can report a
# spurious "context deadline exceeded" failure when a duration runs out
# under CPU load (golang/go#75804, fixed in Go 1.27), and a count has no
# deadline to race. FUZZTIME=10m works too, with that risk.
FUZZTIME_SHORT ?= 150000x
FUZZTIME ?= 3000000x

.PHONY: help run build test test-unit test-guarantees fuzz-short fuzz bench bench-micro bench-bridge bench-persist bench-forward bench-alert lint demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The embedded server's default port; when something (another NATS) already
# listens there, `make run` moves the embedded server to 4223 and says so.
NATS_LISTEN ?= $(shell (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && echo 127.0.0.1:4223 || echo 127.0.0.1:4222)

run: ## run the bridge with an embedded JetStream server (no other setup)
	@[ "$(NATS_LISTEN)" = 127.0.0.1:4222 ] || echo "note: 127.0.0.1:4222 is taken (another NATS server?); the embedded server listens on $(NATS_LISTEN). Point the subscribers and the nats CLI at it: export UBIQO_NATS_URL=nats://$(NATS_LISTEN) NATS_URL=nats://$(NATS_LISTEN)"
	$(GO) run ./cmd/bridge --log.format=console --nats.embedded.listen=$(NATS_LISTEN)

build: ## build static binaries into bin/
	@mkdir -p bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(BINARIES))

test: test-unit test-guarantees fuzz-short ## run every test (PostgreSQL ones when UBIQO_TEST_POSTGRES_DSN is set) and brief fuzzing

# The tests that check the guarantees (nothing lost under faults, exactly
# once, hostile input, no secret logged) run verbosely so the counts they
# checked are in the output.
GUARANTEES := TestFault|TestHostileInput|TestSlowClients|TestSecretsNeverLogged|TestSpool|TestKilledPersister|TestDatabaseOutage|TestEveryCoordinateStoredOnce

test-unit:
	$(GO) test -count=1 -timeout 20m -skip '$(GUARANTEES)' ./...

test-guarantees:
	set -o pipefail; $(GO) test -count=1 -timeout 20m -v -run '$(GUARANTEES)' ./bridge/ ./cmd/bridge/ ./subscribers/ ./subscribers/persist/ \
		| grep -Ev '^\s*$$|^=== (PAUSE|CONT)|writer\.go:[0-9]+: \{'

fuzz-short: ## run each fuzz target briefly
	@set -e; for t in $$($(GO) test -list '^Fuzz' ./bridge/coord/ | grep '^Fuzz'); do \
		echo "fuzz $$t ($(FUZZTIME_SHORT))"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME_SHORT) ./bridge/coord/; \
	done

fuzz: ## fuzz every target for FUZZTIME each
	$(MAKE) fuzz-short FUZZTIME_SHORT=$(FUZZTIME)

BENCH_DURATION ?= 8s
BENCH_ROUNDS ?= 5

bench: bench-micro bench-bridge bench-persist bench-forward bench-alert ## run every benchmark and load run (several minutes)

bench-micro: ## Go microbenchmarks of the hot paths
	$(GO) test -run '^$$' -bench . -benchmem ./bridge/coord/ ./bridge/spool/ ./subscribers/alert/

bench-persist: ## drain a 1,000,000-coordinate backlog into SQLite (and PostgreSQL with UBIQO_TEST_POSTGRES_DSN)
	$(GO) run ./bench/persist

bench-forward: ## forwards per second to a local keep-alive sink, per-device order checked
	$(GO) run ./bench/forward

bench-alert: ## fixes per second through 1,000 circles and 100 polygons for 10,000 devices
	$(GO) run ./bench/alert

bench-bridge: ## bare HTTP vs naive bridge vs ubiqo-bridge vs nats bench, one table (bench/results.md)
	$(GO) run ./bench/bridge -duration $(BENCH_DURATION) -rounds $(BENCH_ROUNDS)

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

demo: ## the whole system on this machine: bridge, persister, alerter, forwarder, simulator (Ctrl-C for the summary)
	$(GO) run ./cmd/internal/demo $(DEMO_FLAGS)

clean: ## remove build output and local data
	rm -rf bin data
