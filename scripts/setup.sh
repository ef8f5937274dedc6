#!/usr/bin/env bash
# Installs what the tests need, idempotently: Debian's MQTT clients, mosquitto (the reference broker
# of the load harness) and kcat, RabbitMQ (the AMQP 1.0
# broker the tests start privately with scripts/rabbitmq.sh) and Qpid Proton's Python client, the
# wasm32-wasip2 target, and tansu (a Kafka-API broker, run as a separate process by the tests).
set -euo pipefail

need_apt=()
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v mosquitto >/dev/null || need_apt+=(mosquitto)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
/usr/bin/python3 -c "import proton" 2>/dev/null || need_apt+=(python3-qpid-proton)
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

TANSU_VERSION=0.6.0
if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  # The default features have no storage engine; dynostore gives memory://.
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
echo "setup: ok"
