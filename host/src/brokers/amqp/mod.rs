//! AMQP 1.0 brokers (RabbitMQ, ActiveMQ Artemis, Qpid): [`sender`] delivers records to a broker's
//! addresses; [`receiver`] reads a queue for a source route and settles each message only once it
//! is settled downstream. The destination's config type and the connection set-up live here.

pub mod receiver;
mod sender;

pub use receiver::AmqpSource;
pub use sender::AmqpDestination;
pub(crate) use sender::to_amqp;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// How long closing a link, a session or a connection waits for the peer's answer.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Awaits one step of an AMQP close (a link's detach, a session's end, a connection's close),
/// giving up after [`CLOSE_WAIT`]. No close is awaited without a bound: a peer that never answers
/// must not hold a task, and fe2o3-amqp's session busy-polls while it waits for the peer's `end`.
pub(crate) async fn close_step<F: Future>(step: F) {
    let _ = tokio::time::timeout(CLOSE_WAIT, step).await;
}

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

/// Opens a connection to the broker at `url` (`amqp[s]://[user:password@]host:port`, TLS first for
/// `amqps`) and begins one session on it.
pub(crate) async fn connect(
    container_id: &str,
    url: &str,
    tls: &ClientTls,
) -> Result<
    (
        fe2o3_amqp::connection::ConnectionHandle<()>,
        fe2o3_amqp::session::SessionHandle<()>,
    ),
    String,
> {
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::{Connection, Session};
    let url = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or("localhost").to_string();
    let secure = url.scheme() == "amqps";
    let port = url.port().unwrap_or(if secure { 5671 } else { 5672 });
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    // fe2o3 never sets it; without it every disposition waits for Nagle and delayed ACKs.
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let sasl = if url.username().is_empty() {
        SaslProfile::Anonymous
    } else {
        SaslProfile::Plain {
            username: percent_decode(url.username()),
            password: percent_decode(url.password().unwrap_or_default()),
        }
    };
    let builder = Connection::builder()
        .container_id(container_id)
        .hostname(host.as_str())
        .sasl_profile(sasl);
    let mut connection = if secure {
        // TLS first, then AMQP over it (`amqps`): fe2o3's own TLS would negotiate it inside AMQP
        // instead, which brokers' TLS ports do not speak.
        let config = crate::edge::tls::client_config(tls).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        builder.open_with_stream(stream).await
    } else {
        builder.open_with_stream(stream).await
    }
    .map_err(|e| e.to_string())?;
    match Session::begin(&mut connection).await {
        Ok(session) => Ok((connection, session)),
        Err(e) => {
            close_step(connection.close()).await;
            Err(e.to_string())
        }
    }
}

/// A URL's user name or password as written, `%XX` escapes decoded.
fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}
