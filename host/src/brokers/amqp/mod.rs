//! AMQP 1.0 brokers (RabbitMQ, ActiveMQ Artemis, Qpid): [`sender`] delivers records to a broker's
//! addresses. The destination's config type lives here.

mod sender;

pub use sender::AmqpDestination;

use std::path::PathBuf;
use std::time::Duration;

/// `kind: amqp`.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpConfig {
    /// `amqp[s]://[user:password@]host:port`, with `${VAR}` already filled from the environment.
    pub url: String,
    /// For `amqps://`: what the broker's certificate is verified against, and the proxy's own
    /// certificate if the broker asks for one. The files are read at every connect, so a renewed
    /// one is picked up without a reload.
    pub tls: ClientTls,
    /// How long a record may wait for the connection, link credit and the broker's outcome, all
    /// together, before it counts as failed (retriable).
    pub timeout: Duration,
}

impl AmqpConfig {
    /// The URL with its password replaced by `***`, for logs and `/status`.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            Ok(u) => u.to_string(),
            Err(_) => "(invalid url)".into(),
        }
    }
}

/// The client side of TLS towards a broker (`tls:` of an AMQP destination).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientTls {
    /// CA certificates (PEM) the broker's certificate must chain to; the system's trust store
    /// when unset.
    pub ca: Option<PathBuf>,
    /// A client certificate chain and its key (PEM), for brokers that verify clients.
    pub cert: Option<(PathBuf, PathBuf)>,
}
