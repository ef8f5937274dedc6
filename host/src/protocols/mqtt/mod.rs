//! The MQTT 3.1.1 and 5 listener: accepts connections and runs one [`connection`] task each,
//! over plain TCP, TLS, WebSocket or WebSocket over TLS (see [`crate::edge`]).
//!
//! This is an own connection loop on rumqttc's packet codecs rather than an embedded broker:
//! a broker acknowledges a PUBLISH when it has stored it, and the proxy must acknowledge only when
//! the downstream broker has (see ARCHITECTURE.md).

mod codec;
mod connection;
mod reader;
pub mod session;
pub mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::edge::tls::{TlsAcceptor, TlsConfig};
use crate::edge::websocket;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// What every MQTT listener of one proxy shares: which clients are connected, every client's
/// subscriptions, and the sessions kept between connections.
pub struct Clients {
    /// Connected client ids, for takeovers.
    pub live: session::Live,
    /// Every client's subscriptions; also the `mqtt` destination.
    pub subscribers: Arc<subscriptions::Subscribers>,
    /// Sessions kept while their clients are away.
    pub sessions: Arc<dyn session::SessionStore>,
}

impl Clients {
    /// Clients sharing `subscribers`, with sessions kept in memory.
    pub fn new(subscribers: Arc<subscriptions::Subscribers>) -> Self {
        Clients {
            live: session::Live::default(),
            sessions: Arc::new(session::MemorySessions::new(subscribers.clone())),
            subscribers,
        }
    }
}

/// A bound MQTT listener, not yet accepting.
pub struct MqttListener {
    listener: TcpListener,
    settings: Arc<MqttListenerConfig>,
    tls: Option<Arc<TlsAcceptor>>,
}

impl MqttListener {
    /// Binds `settings.bind`; `tls` is the listener's loaded certificate when it has `tls:`.
    pub async fn bind(
        settings: MqttListenerConfig,
        tls: Option<Arc<TlsAcceptor>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.bind).await?;
        Ok(MqttListener {
            listener,
            settings: Arc::new(settings),
            tls,
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` turns true. Connection tasks and the dispatches they
    /// start are spawned on `tracker`, so a shutdown can wait for them to drain.
    pub async fn run(
        self,
        pipeline: Arc<Pipeline>,
        clients: Arc<Clients>,
        metrics: Arc<Metrics>,
        limits: Arc<Limits>,
        mut shutdown: watch::Receiver<bool>,
        tracker: TaskTracker,
    ) {
        let limit = limits.listener(&self.settings.name, self.settings.max_connections);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Over the limit the socket is closed before anything is read from it.
                        let Some(permit) = limit.admit() else {
                            continue;
                        };
                        let ctx = connection::Context {
                            pipeline: pipeline.clone(),
                            limits: limits.clone(),
                            metrics: metrics.clone(),
                            settings: self.settings.clone(),
                            clients: clients.clone(),
                            shutdown: shutdown.clone(),
                            tracker: tracker.clone(),
                        };
                        let tls = self.tls.clone();
                        tracker.spawn(async move {
                            if tls.is_none() && ctx.settings.websocket.is_none() {
                                connection::serve_tcp(stream, peer, ctx).await;
                            } else {
                                // Boxed: a task's future is as large as its largest branch, and
                                // the TLS and WebSocket handshakes would double what every
                                // plain connection costs while it waits (BENCHMARKS.md).
                                Box::pin(serve_wrapped(stream, peer, ctx, tls)).await;
                            }
                            drop(permit);
                        });
                    }
                    Err(error) => {
                        // Usually out of file descriptors: wait instead of spinning.
                        tracing::warn!(%error, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = crate::stopped(&mut shutdown) => break,
            }
        }
    }
}

/// Serves a connection of a TLS or WebSocket listener: the handshakes first, within the
/// listener's `connect_timeout_ms`, then MQTT over the stream they return.
async fn serve_wrapped(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: connection::Context,
    tls: Option<Arc<TlsAcceptor>>,
) {
    // Without it every acknowledgement waits ~40 ms for Nagle's algorithm and delayed ACKs.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let settings = ctx.settings.clone();
    let metrics = ctx.metrics.clone();
    let handshakes = async {
        match (&tls, &settings.websocket) {
            (Some(tls), websocket) => {
                let (stream, certificate) = match tls.accept(stream).await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        metrics.tls_handshake(&settings.name, "failed");
                        return Err(error);
                    }
                };
                metrics.tls_handshake(&settings.name, "ok");
                let (r, w) = match websocket {
                    Some(path) => websocket::accept(stream, path, max_frame(&settings)).await?,
                    None => {
                        let (r, w) = tokio::io::split(stream);
                        (
                            Box::new(r) as websocket::Reader,
                            Box::new(w) as websocket::Writer,
                        )
                    }
                };
                Ok((r, w, certificate))
            }
            (None, Some(path)) => {
                let (r, w) = websocket::accept(stream, path, max_frame(&settings)).await?;
                Ok((r, w, None))
            }
            (None, None) => {
                let (r, w) = stream.into_split();
                Ok((
                    Box::new(r) as websocket::Reader,
                    Box::new(w) as websocket::Writer,
                    None,
                ))
            }
        }
    };
    match tokio::time::timeout(settings.connect_timeout, handshakes).await {
        Ok(Ok((reader, writer, certificate))) => {
            connection::serve(reader, writer, peer, ctx, certificate).await;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, listener = settings.name, %error, "handshake failed");
        }
        Err(_) => {
            if tls.is_some() {
                metrics.tls_handshake(&settings.name, "timeout");
            }
            tracing::debug!(%peer, listener = settings.name, "handshake timed out");
        }
    }
}

/// The largest WebSocket frame or message accepted: a packet of the largest size, with room for
/// small packets a client sends in the same message. It bounds what the proxy buffers per frame.
fn max_frame(settings: &MqttListenerConfig) -> usize {
    usize::try_from(settings.max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024)
}

/// Feeds `data` to a fresh decoder as a connection would, in two reads split where its first byte
/// says, until the decoder wants more bytes or refuses them (see [`crate::fuzzing`]).
pub(crate) fn fuzz_decode(data: &[u8]) {
    use tokio_util::codec::Decoder;
    let Some((split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(*split).min(data.len());
    let mut decoder = codec::MqttDecoder::new(64 * 1024);
    let mut buf = bytes::BytesMut::new();
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// A listener speaking MQTT: `listeners.mqtt`, or one with `protocol: mqtt | mqtt-ws`.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttListenerConfig {
    /// Its name under `listeners:` (in logs and metrics).
    pub name: String,
    /// The address to listen on.
    pub bind: SocketAddr,
    /// TLS, when set: every connection starts with a TLS handshake.
    pub tls: Option<TlsConfig>,
    /// `protocol: mqtt-ws`: the HTTP path a WebSocket upgrade must ask for.
    pub websocket: Option<String>,
    /// The largest packet accepted, in bytes (advertised to MQTT 5 clients).
    pub max_packet_size: u32,
    /// Unacknowledged QoS 1 and 2 messages allowed per connection (advertised to MQTT 5 clients).
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may set.
    pub topic_alias_maximum: u16,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: Duration,
    /// Open connections on this listener (also bounded by `limits.max_connections`).
    pub max_connections: u32,
    /// MQTT 5 Server Keep Alive: when set, the keep-alive every MQTT 5 client must use, sent in
    /// CONNACK in place of the one it asked for.
    pub server_keep_alive: Option<u16>,
}
