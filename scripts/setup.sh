#!/usr/bin/env bash
# Installs what the tests need, idempotently: Debian's MQTT clients, mosquitto (the reference broker
# of the load harness) and kcat, RabbitMQ (the AMQP 1.0
# broker the tests start privately with scripts/rabbitmq.sh) and Qpid Proton's Python client, the
# wasm32-wasip2 target, tansu (a Kafka-API broker, run as a separate process by the tests) and
# PostgreSQL's server (the crash-safe storage of tansu in the broker-kill fault run).
#
#   scripts/setup.sh           everything the tests need
#   scripts/setup.sh --build   only what building the proxy needs (`make run`, `make check`)
set -euo pipefail

need_apt=()
# librdkafka's TLS and SASL SCRAM link to the system's OpenSSL.
pkg-config --exists openssl 2>/dev/null || need_apt+=(libssl-dev pkg-config)
if [ "${1:-}" = "--build" ]; then
  build_only=1
else
  build_only=0
fi
[ "$build_only" = 1 ] || {
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
/usr/bin/python3 -c "import proton" 2>/dev/null || need_apt+=(python3-qpid-proton)
/usr/bin/python3 -c "import paho.mqtt" 2>/dev/null || need_apt+=(python3-paho-mqtt)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The TLS terminator in front of tansu in the Kafka-over-TLS test.
command -v stunnel >/dev/null || need_apt+=(stunnel4)
# The README's "Secure it" example makes its certificates with the openssl command.
command -v openssl >/dev/null || need_apt+=(openssl)
}
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Keep apt from starting RabbitMQ as a system service on its public default port: the tests
  # start their own nodes on loopback.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d > /dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
if [ "$build_only" = 1 ]; then
  echo "setup (build): ok"
  exit 0
fi

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql,postgres
# cargo records the features an installed binary was built with.
tansu_features() {
  python3 - "$TANSU_VERSION" <<'PY'
import json, os, sys
path = os.path.join(os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo")), ".crates2.json")
try:
    installs = json.load(open(path))["installs"]
except (OSError, KeyError, ValueError):
    sys.exit(0)
for key, info in installs.items():
    if key.startswith("tansu " + sys.argv[1] + " "):
        print(",".join(sorted(info.get("features", []))))
PY
}
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION" || [ "$(tansu_features)" != "$TANSU_FEATURES" ]; then
  # The default features have no storage engine: dynostore gives memory://, postgres the
  # storage that outlives a killed broker.
  cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES"
fi
echo "setup: ok"
