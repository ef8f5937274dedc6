#!/usr/bin/env bash
# A private RabbitMQ 3.x with its AMQP 1.0 plugin, bound to 127.0.0.1 only, for the tests.
#
#   scripts/rabbitmq.sh start DIR AMQP_PORT DIST_PORT EPMD_PORT [WATCH_PID]
#   scripts/rabbitmq.sh stop DIR
#
# With RABBITMQ_TLS_PORT and RABBITMQ_TLS_DIR (holding ca.pem, server.pem and server.key) set, the
# node also listens for TLS (amqps) on that port, and requires a client certificate issued by that CA.
#
# Everything (node data, logs, Erlang cookie, pid file) lives in DIR. `start` returns once the node
# accepts connections. With WATCH_PID, the node is stopped when that process exits, so a test run
# that dies leaves no broker behind. Use ports below 32768: inside the kernel's ephemeral range a
# broker port can collide with RabbitMQ's own outgoing connections.
set -euo pipefail

# Debian's /usr/sbin wrappers switch to the rabbitmq user, who cannot write to DIR; the scripts
# they wrap run as the caller.
bin=/usr/lib/rabbitmq/bin

cmd=${1:?start or stop}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)

env_for() {
  export HOME="$dir"
  export RABBITMQ_NODENAME="barnabas-test@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE="$dir/mnesia"
  export RABBITMQ_LOG_BASE="$dir/log"
  export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
  export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
  export ERL_EPMD_ADDRESS=127.0.0.1
  export ERL_EPMD_PORT=$(cat "$dir/epmd.port")
}

case "$cmd" in
  start)
    amqp=${3:?AMQP_PORT}; dist=${4:?DIST_PORT}; epmd_port=${5:?EPMD_PORT}; watch=${6:-}
    echo "$epmd_port" > "$dir/epmd.port"
    echo "[rabbitmq_amqp1_0]." > "$dir/enabled_plugins"
    # Anonymous AMQP 1.0 clients act as guest, which may log in from loopback only.
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp
loopback_users.guest = true
CONF
    if [ -n "${RABBITMQ_TLS_PORT:-}" ]; then
      tls=${RABBITMQ_TLS_DIR:?RABBITMQ_TLS_DIR}
      cat >> "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = 127.0.0.1:$RABBITMQ_TLS_PORT
ssl_options.cacertfile = $tls/ca.pem
ssl_options.certfile = $tls/server.pem
ssl_options.keyfile = $tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
CONF
    fi
    env_for
    export RABBITMQ_NODE_PORT=$amqp RABBITMQ_DIST_PORT=$dist
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    epmd -address 127.0.0.1 -port "$epmd_port" -daemon
    setsid "$bin/rabbitmq-server" > "$dir/server.out" 2>&1 < /dev/null &
    server=$!
    # Wait for the node to boot, but give up at once if it dies.
    until "$bin/rabbitmqctl" await_startup --timeout 5 > "$dir/wait.out" 2>&1; do
      if ! kill -0 "$server" 2>/dev/null; then
        tail -20 "$dir/server.out" >&2
        exit 1
      fi
    done
    if [ -n "$watch" ]; then
      setsid bash -c "while kill -0 $watch 2>/dev/null; do sleep 1; done; '$0' stop '$dir'" \
        > /dev/null 2>&1 < /dev/null &
    fi
    ;;
  stop)
    [ -f "$dir/epmd.port" ] || exit 0
    env_for
    if [ -f "$RABBITMQ_PID_FILE" ]; then
      pid=$(cat "$RABBITMQ_PID_FILE")
      "$bin/rabbitmqctl" stop > /dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$RABBITMQ_PID_FILE"
    fi
    epmd -port "$ERL_EPMD_PORT" -kill > /dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start|stop DIR ..." >&2; exit 2 ;;
esac
