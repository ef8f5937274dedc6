//! Barnabas: a messaging proxy. Clients publish over MQTT or AMQP 1.0; WebAssembly plugins
//! transform, filter and route each message; the proxy delivers it to Kafka or an AMQP broker and
//! acknowledges the client only once that broker has committed it.
//!
//! The code is grouped by what it talks to. [`protocols`] holds the client protocols (MQTT, AMQP
//! 1.0), each with its listener, codec and per-client state; [`brokers`] holds the brokers (Kafka,
//! AMQP 1.0), each with its config and client; [`edge`] holds what a connection passes before a
//! protocol speaks (TLS, WebSocket) and who the client is ([`edge::auth`]). Between them sits the
//! core: [`message`], [`pipeline`] (with [`router`] and [`plugin`]).
//!
//! The data path, in the order a message takes it: a protocol's listener → [`pipeline`] →
//! [`brokers::Destination`], and the [`message::Outcome`] back to the client's protocol.
//! The way back: [`sources`] runs a reader per source route, which hands each record to the
//! pipeline like a client's message, towards the proxy's own subscribers.
//! [`config`] compiles routes.yaml; [`reload`] swaps a new version in whole; [`limits`] bounds
//! connections and message bytes under way; [`metrics`] counts what happens and [`admin`] serves it
//! over HTTP; [`proxy`] wires a running instance together.
//!
//! Beside the data path: [`recorder`] copies a route's messages to `barnabas record`, [`shadow`]
//! runs a route's shadow plugins and compares, and
//! [`authoring`] holds what plugin authors run (`barnabas plugin new | build | test`, `replay`).

pub mod admin;
pub mod authoring;
pub mod brokers;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod protocols;
pub mod proxy;
pub mod recorder;
pub mod reload;
pub mod router;
pub mod shadow;
pub mod sources;

pub use config::Config;
pub use proxy::Proxy;

/// Raises this process's open-file soft limit to its hard limit. Every client connection is a file
/// descriptor, and the usual soft limit (1024) would cap a proxy, or a load generator, far below
/// what it can serve.
pub fn raise_open_file_limit() -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok(())
}

/// Resolves once a shutdown signal turns true (or its sender is gone). Listeners, connections
/// and the config watcher all stop on the same `watch` channel.
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
