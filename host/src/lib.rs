//! Barnabas: a messaging proxy. Clients publish over MQTT or AMQP 1.0; WebAssembly plugins
//! transform, filter and route each message; the proxy delivers it to Kafka or an AMQP broker and
//! acknowledges the client only once that broker has committed it.
//!
//! The data path, in the order a message takes it:
//! [`ingress`] → [`pipeline`] (with [`router`] and [`plugin`]) → [`egress`], and the
//! [`message::Outcome`] back to the ingress. [`config`] compiles routes.yaml; [`reload`] swaps a new
//! version in whole; [`limits`] bounds connections and message bytes under way; [`metrics`] counts
//! what happens and [`admin`] serves it over HTTP; [`proxy`] wires a running instance together.

pub mod admin;
pub mod auth;
pub mod config;
pub mod edge;
pub mod egress;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingress;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;

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
