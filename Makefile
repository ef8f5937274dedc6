# The commands people repeat. `make run` and `make test` do all their own set-up.
.PHONY: run test setup build-deps plugins check bench bench-plugin bench-routes bench-curves bench-reload bench-fleet bench-connections fuzz fuzz-long faults clean

CARGO ?= cargo

## Build the plugins and the proxy, and run it on routes.yaml (embedded Kafka, no broker needed).
run: build-deps plugins
	$(CARGO) run --release -p barnabas -- run --config routes.yaml

## Install what the tests need, build the plugins, run every test.
test: setup plugins
	scripts/test.sh

## Validate routes.yaml and its plugins.
check: build-deps plugins
	$(CARGO) run --release -p barnabas -- check --config routes.yaml

## Idempotent: apt packages, the wasm32-wasip2 target, the Kafka-API broker used by the tests.
setup:
	scripts/setup.sh

## Idempotent: what building the proxy needs beyond Rust (OpenSSL's headers, the wasm target).
build-deps:
	scripts/setup.sh --build

## Build every plugin under plugins/ into plugins/dist/NAME.wasm.
plugins:
	scripts/build-plugins.sh

## The load harness: the same messages straight into Kafka, through the proxy (MQTT and AMQP, with
## and without plugins, recorded and shadowed) and through mosquitto, side by side (needs `make setup` first).
bench: plugins
	$(CARGO) build --release -p barnabas
	$(CARGO) run --release -p barnabas-bench -- throughput --only a,b,c,d,e,f,i,r,s

## Criterion benchmarks of the plugin call.
bench-plugin: plugins
	$(CARGO) bench -p barnabas --bench plugin_call

## Criterion benchmarks of choosing a route among 10, 1,000 and 100,000.
bench-routes:
	$(CARGO) bench -p barnabas --bench route_select

## Scenario (b) as the work grows: plugin chain length, number of routes, payload size.
bench-curves: plugins
	$(CARGO) build --release -p barnabas
	$(CARGO) run --release -p barnabas-bench -- curves

## A fleet: 20,000 MQTT 5 connections, each publishing one QoS 1 message a second, through the
## proxy into Kafka next to mosquitto on the same shape (publish-to-destination latency, CPU, RSS).
bench-fleet: plugins
	$(CARGO) build --release -p barnabas
	$(CARGO) run --release -p barnabas-bench -- fleet

## Memory per idle MQTT connection, 10,000 of them.
bench-connections:
	$(CARGO) build --release -p barnabas
	$(CARGO) run --release -p barnabas-bench -- connections

## Routes.yaml edits under MQTT QoS 1 load: write -> serving time and the throughput dip.
bench-reload: plugins
	$(CARGO) run --release -p barnabas-bench -- reload

## Coverage-guided fuzzing (libFuzzer) of the MQTT decoder, the AMQP frame guard and the
## routes.yaml compiler, 60 s each. The test suite replays their corpora; see RELIABILITY.md.
fuzz:
	scripts/fuzz.sh --seconds 60

## The long campaign recorded in RELIABILITY.md: 10 million executions per target.
fuzz-long:
	scripts/fuzz.sh --runs 10000000

## The fault runs of RELIABILITY.md, long form (their short form runs in `make test`): the proxy
## SIGKILLed, Kafka stalled for 30 s, hostile plugins, 10,000 idle connections and a login flood.
faults: plugins
	$(CARGO) build --release -p barnabas -p barnabas-bench
	target/release/bench faults --long

clean:
	$(CARGO) clean
	rm -rf plugins/target plugins/dist
