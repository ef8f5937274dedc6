//! One MQTT connection: CONNECT, then PUBLISH flows acknowledged in order, each only after the
//! pipeline's outcome for it is known.
//!
//! Each PUBLISH is routed, run through its plugins and handed to the producers by the connection
//! itself, one after the other, so its records reach every partition in PUBLISH order; what is
//! left, the wait for the brokers' acknowledgements, is queued in a `FuturesOrdered`, so a slow
//! broker does not stall reading and acknowledgements leave in PUBLISH order, as MQTT requires.
//! No task per message: a delivery report wakes the connection directly. Reading stops while the
//! queue is full, which pushes back on the client through TCP; a connection that ends leaves its
//! deliveries under way to a task that follows them to their end.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt, future};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::Clients;
use super::MqttListenerConfig;
use super::codec::{
    AckCode, ConnAckInfo, Connect, DecodeError, Incoming, MqttDecoder, Outgoing, OutgoingPublish,
    Publish, SubscribeCode, SubscribeFilter, Version, Will, encode,
};
use super::reader::PacketReader;
use super::session::{InFlight, MAX_SESSION_EXPIRY, Resend, SessionState};
use super::subscriptions::{Outbound, Subscription, parse_filter};
use crate::brokers::BrokerError;
use crate::edge::auth::{Login, Method};
use crate::edge::tls::PeerCertificate;
use crate::limits::{InflightPermit, Limits};
use crate::message::{
    Header, Message, Outcome, Protocol, Rejection, Source, is_reserved_header, well_known,
};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// What a connection task needs from its listener.
pub(super) struct Context {
    pub pipeline: Arc<Pipeline>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<MqttListenerConfig>,
    /// Connected clients, subscriptions and kept sessions, shared by every MQTT listener.
    pub clients: Arc<Clients>,
    pub shutdown: watch::Receiver<bool>,
    pub tracker: TaskTracker,
}

/// The acknowledgement a finished dispatch asks for.
struct Ack {
    qos: u8,
    pkid: u16,
    code: AckCode,
    reason: Option<String>,
    /// Not delivered for now: a 3.1.1 client, which has no negative ack, is disconnected so that it
    /// resends.
    retry: bool,
}

/// Why a connection ended, for the log and the MQTT 5 DISCONNECT.
struct Close {
    code: Option<DisconnectReasonCode>,
    reason: String,
    /// Whether the Last Will is due: every end but a normal client DISCONNECT [MQTT-3.1.2-8].
    publish_will: bool,
}

impl Close {
    fn quiet(reason: impl Into<String>) -> Self {
        Close {
            code: None,
            reason: reason.into(),
            publish_will: true,
        }
    }
    fn write_failed(e: std::io::Error) -> Self {
        Close::quiet(format!("write failed: {e}"))
    }
    fn with(code: DisconnectReasonCode, reason: impl Into<String>) -> Self {
        Close {
            code: Some(code),
            reason: reason.into(),
            publish_will: true,
        }
    }
}

/// The write half of a connection (TCP now; TLS and WebSocket streams share the code), with the
/// packets encoded and not yet written.
struct Writer<W> {
    half: W,
    buf: BytesMut,
    version: Version,
    problem_info: bool,
    max_size: Option<u32>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Encodes `packet` and writes it, with any packets pushed before it.
    async fn send(&mut self, packet: Outgoing) -> std::io::Result<()> {
        self.push(packet)?;
        self.flush().await
    }

    /// Encodes `packet` behind those already waiting; [`Writer::flush`] writes them together.
    fn push(&mut self, packet: Outgoing) -> std::io::Result<()> {
        encode(
            self.version,
            packet,
            self.problem_info,
            self.max_size,
            &mut self.buf,
        )
        .map_err(std::io::Error::other)
    }

    /// Encodes `packet` behind those already waiting, or leaves the buffer as it was when it
    /// cannot be encoded (larger than the client's maximum packet size).
    fn push_checked(&mut self, packet: Outgoing) -> Result<(), String> {
        let mut one = BytesMut::new();
        encode(
            self.version,
            packet,
            self.problem_info,
            self.max_size,
            &mut one,
        )?;
        self.buf.extend_from_slice(&one);
        Ok(())
    }

    /// Writes every pushed packet in one write, and flushes it: a no-op on TCP, what sends the
    /// WebSocket frame on WebSocket.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut result = self.half.write_all(&self.buf).await;
        if result.is_ok() {
            result = self.half.flush().await;
        }
        self.buf.clear();
        result
    }
}

/// Serves one accepted connection until it closes.
pub(super) async fn serve_tcp(stream: TcpStream, peer: SocketAddr, ctx: Context) {
    // Without it every acknowledgement waits ~40 ms for Nagle's algorithm and delayed ACKs.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let (read_half, write_half) = stream.into_split();
    serve(read_half, write_half, peer, ctx, None).await;
}

/// Serves one connection, given its two halves, until it closes. `certificate` is the client's
/// TLS certificate, verified, when it sent one.
pub(super) async fn serve<R, W>(
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    ctx: Context,
    certificate: Option<PeerCertificate>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _open = ctx.metrics.connection_opened(&ctx.settings.name);
    let mut reader = PacketReader::new(read_half, MqttDecoder::new(ctx.settings.max_packet_size));
    let mut writer = Writer {
        half: write_half,
        buf: BytesMut::with_capacity(256),
        version: Version::V4,
        problem_info: false,
        max_size: None,
    };

    let connect = match tokio::time::timeout(ctx.settings.connect_timeout, reader.next()).await {
        Ok(Some(Ok(Incoming::Connect(c)))) => c,
        Ok(Some(Ok(Incoming::UnsupportedProtocol(level)))) => {
            // The 3.1.1 answer, the only one a client of an unknown version can be expected to
            // read [MQTT-3.1.2-2].
            let _ = writer.half.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            let _ = writer.half.flush().await;
            tracing::debug!(%peer, level, "refused: unsupported protocol level");
            return;
        }
        Ok(Some(Ok(_))) => return,
        Ok(Some(Err(error))) => {
            tracing::debug!(%peer, %error, "closed before CONNECT");
            return;
        }
        Ok(None) => return,
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    writer.version = connect.version;
    writer.problem_info = connect.problem_info;
    writer.max_size = connect.max_packet_size;

    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if connect.version == Version::V4 && !connect.clean_start {
            // A 3.1.1 client must name itself to keep a session [MQTT-3.1.3-8].
            let _ = writer
                .send(Outgoing::ConnRefused(
                    ConnectReturnCode::ClientIdentifierNotValid,
                ))
                .await;
            return;
        }
        let id = format!("barnabas-{:016x}", RandomState::new().hash_one(peer));
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };

    // Watched from before the login, so that a reload landing between the login and the session
    // loop is not missed (a user removed then is disconnected all the same).
    let generations = ctx.pipeline.generations();
    // The `auth:` of the config serving now: a reload applies to the next login.
    let auth = ctx.pipeline.snapshot().auth().clone();
    let credentials = connect
        .login
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_bytes()));
    // A verified client certificate is the login when `client_certs` says so; the CONNECT's user
    // name and password are then not used (as mosquitto's `use_identity_as_username`).
    let (login, method) = match certificate
        .as_ref()
        .and_then(|c| auth.login_certificate(c, &ctx.limits))
    {
        Some(login) => (login, Method::Certificate),
        None => (
            auth.login(credentials, peer.ip(), &ctx.limits),
            Method::Password,
        ),
    };
    let identity: Option<Arc<str>> = match login {
        Login::User(user) => Some(Arc::from(user)),
        Login::Anonymous => None,
        refused => {
            // 3.1.1 gets 0x04 (bad user name or password), 0x05 (not authorised) or 0x03 (server
            // unavailable) for these.
            let code = match refused {
                Login::CredentialsRequired => ConnectReturnCode::NotAuthorized,
                // A certificate without the field that names its client.
                Login::Refused if method == Method::Certificate => ConnectReturnCode::NotAuthorized,
                Login::Throttled => ConnectReturnCode::ConnectionRateExceeded,
                _ => ConnectReturnCode::BadUserNamePassword,
            };
            let user = connect
                .login
                .as_ref()
                .map(|(u, _)| u.as_str())
                .unwrap_or_default();
            tracing::info!(%peer, client_id, user, ?code, "mqtt login refused");
            let _ = writer.send(Outgoing::ConnRefused(code)).await;
            let _ = writer.half.shutdown().await;
            return;
        }
    };

    // A Last Will is a publish like any other: a client may not leave one where it may not publish.
    if let Some(will) = &connect.will
        && !auth.may_publish(identity.as_deref(), &client_id, &will.topic)
    {
        ctx.metrics.acl_denied("mqtt");
        tracing::info!(%peer, client_id, topic = will.topic, "will refused by the ACL");
        let _ = writer
            .send(Outgoing::ConnRefused(ConnectReturnCode::NotAuthorized))
            .await;
        let _ = writer.half.shutdown().await;
        return;
    }

    let registration = ctx.clients.live.register(&client_id);
    if let Some(previous) = registration.previous {
        // The connection taken over hands its session back as it closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), previous).await;
    }
    // How long the session outlives this connection: MQTT 5 says, a 3.1.1 client with Clean
    // Session 0 keeps it, both bounded by MAX_SESSION_EXPIRY.
    let asked = match connect.version {
        Version::V5 => Duration::from_secs(u64::from(connect.session_expiry)),
        Version::V4 if !connect.clean_start => MAX_SESSION_EXPIRY,
        Version::V4 => Duration::ZERO,
    };
    let expiry = asked.min(MAX_SESSION_EXPIRY);
    let kept = ctx.clients.sessions.take(&client_id);
    let (session, present) = match kept {
        Some(old) if connect.clean_start => {
            // A clean start ends the old session: its subscriptions go, and what it held fails.
            ctx.clients.subscribers.remove_session(&client_id, old.id);
            (new_session(&ctx, &client_id), false)
        }
        Some(old) => (old, true),
        None => (new_session(&ctx, &client_id), false),
    };
    let connack = Outgoing::ConnAck(ConnAckInfo {
        session_present: present,
        session_expiry: (connect.version == Version::V5 && asked > MAX_SESSION_EXPIRY)
            .then_some(MAX_SESSION_EXPIRY.as_secs() as u32),
        assigned_client_id: assigned,
        receive_maximum: ctx.settings.receive_maximum,
        max_packet_size: ctx.settings.max_packet_size,
        topic_alias_maximum: ctx.settings.topic_alias_maximum,
        server_keep_alive: match connect.version {
            Version::V5 => ctx.settings.server_keep_alive,
            Version::V4 => None,
        },
    });
    let mut connection = Connection::new(&ctx, &connect, session, identity.clone(), method);
    if writer.send(connack).await.is_ok() {
        tracing::debug!(%peer, client_id, version = ?connect.version, present, "connected");
        let close = connection
            .run(&mut reader, &mut writer, registration.takeover, generations)
            .await;
        if let (Version::V5, Some(code)) = (connect.version, close.code) {
            let reason = Some(close.reason.clone());
            let _ = writer.send(Outgoing::Disconnect { code, reason }).await;
        }
        tracing::debug!(%peer, client_id, reason = close.reason, "disconnected");
        if let (Some(mut will), true) = (connect.will.clone(), close.publish_will) {
            // The will is due when its delay ends or the session does, whichever comes first
            // [MQTT-3.1.3-9].
            will.delay = will.delay.min(expiry.as_secs() as u32);
            publish_will(&ctx, Arc::from(client_id.as_str()), identity, will);
        }
    }
    let _ = writer.half.shutdown().await;
    let session = connection.end();
    if expiry.is_zero() {
        // The session ends with the connection: its subscriptions go, and messages it had not
        // acknowledged fail for their sources (dropping its queue and in-flight table tells them).
        ctx.clients
            .subscribers
            .remove_session(&client_id, session.id);
    } else {
        ctx.clients.sessions.keep(session, expiry);
    }
    drop(registration.release);
    ctx.clients.live.unregister(&client_id, registration.id);
}

/// A new, empty session for `client_id`.
fn new_session(ctx: &Context, client_id: &str) -> SessionState {
    SessionState::new(Arc::from(client_id), ctx.clients.live.next_id())
}

/// One connected client: the connection's own state, and the client's session while it is
/// connected.
struct Connection<'a> {
    ctx: &'a Context,
    version: Version,
    client_id: Arc<str>,
    /// Who logged in; `None` for an anonymous client.
    identity: Option<Arc<str>>,
    /// How it proved that identity (what a reload has to keep allowing for it to stay).
    method: Method,
    keep_alive: Option<Duration>,
    /// Dispatches under way, in PUBLISH order.
    queue: FuturesOrdered<AckFuture>,
    /// QoS 1 and 2 messages in the queue.
    unacked: usize,
    /// QoS 2 packet ids in the queue, so a resent PUBLISH is not dispatched twice.
    qos2_pending: HashSet<u16>,
    /// What the client's session remembers: subscriptions, its queue of messages to send, and
    /// the QoS 2 and in-flight tables both ways.
    session: SessionState,
    /// How many QoS 1 and 2 messages to the client may be unacknowledged at once (its Receive
    /// Maximum).
    send_quota: usize,
    /// MQTT 5 topic aliases set by the client.
    aliases: HashMap<u16, String>,
}

type AckFuture = BoxFuture<'static, Ack>;

impl<'a> Connection<'a> {
    fn new(
        ctx: &'a Context,
        connect: &Connect,
        session: SessionState,
        identity: Option<Arc<str>>,
        method: Method,
    ) -> Self {
        // An MQTT 5 client uses the Server Keep Alive when the listener sets one [MQTT-3.2.2-21].
        let keep_alive = match (connect.version, ctx.settings.server_keep_alive) {
            (Version::V5, Some(server)) => server,
            _ => connect.keep_alive,
        };
        // A client that sends nothing for 1.5 times its keep-alive is gone [MQTT-3.1.2-24].
        let keep_alive =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        Connection {
            ctx,
            version: connect.version,
            client_id: session.client_id.clone(),
            identity,
            method,
            keep_alive,
            queue: FuturesOrdered::new(),
            unacked: 0,
            qos2_pending: HashSet::new(),
            session,
            send_quota: usize::from(
                connect
                    .receive_maximum
                    .unwrap_or(ctx.settings.receive_maximum)
                    .max(1),
            ),
            aliases: HashMap::new(),
        }
    }

    /// Takes `bytes` from the proxy's in-flight budget. While it is spent this waits, and the
    /// connection is not read: the client is slowed down through TCP rather than the proxy
    /// growing. Meanwhile the connection goes on acknowledging the deliveries that finish, since
    /// a delivery gives its bytes back when its wait in the queue ends: bytes this connection
    /// holds may be what it, or another connection, is waiting for.
    async fn reserve<W: AsyncWrite + Unpin>(
        &mut self,
        bytes: usize,
        writer: &mut Writer<W>,
    ) -> Result<InflightPermit, Close> {
        let ctx: &Context = self.ctx;
        let reserve = ctx.limits.reserve(bytes);
        tokio::pin!(reserve);
        loop {
            tokio::select! {
                biased;
                budget = &mut reserve => return Ok(budget),
                Some(ack) = self.queue.next(), if !self.queue.is_empty() => {
                    self.acknowledge(ack, writer)?;
                    writer.flush().await.map_err(Close::write_failed)?;
                }
            }
        }
    }

    /// Ends the connection and gives back its session. Deliveries still under way are followed
    /// to their end (their metrics and in-flight budget) on a task of their own: the records are
    /// with the brokers and nothing is cancelled; only nobody is left to acknowledge them to.
    fn end(self) -> SessionState {
        if !self.queue.is_empty() {
            self.ctx
                .tracker
                .spawn(self.queue.for_each(|_| future::ready(())));
        }
        self.session
    }

    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        reader: &mut PacketReader<R>,
        writer: &mut Writer<W>,
        mut takeover: tokio::sync::oneshot::Receiver<()>,
        mut generations: watch::Receiver<u64>,
    ) -> Close {
        let mut shutdown = self.ctx.shutdown.clone();
        let mut draining: Option<Close> = None;
        // When the client was last heard from. The keep-alive timer is not moved on every packet
        // (each move is a trip into tokio's timer wheel, under its lock): when it fires, it checks
        // this and, if the client was heard since, is set again for the time now due.
        let mut heard = Instant::now();
        let far_future = heard + Duration::from_secs(86400 * 365);
        let deadline = tokio::time::sleep_until(self.keep_alive.map_or(far_future, |k| heard + k));
        tokio::pin!(deadline);
        let cap = usize::from(self.ctx.settings.receive_maximum);
        let mut paused = false;
        // A resumed session first sends again what the client had not acknowledged.
        for packet in self.session.to_resend() {
            let packet = match packet {
                Resend::Publish(p) => Outgoing::Publish(*p),
                Resend::PubRel(pkid) => Outgoing::PubRel { pkid },
            };
            if let Err(error) = writer.push(packet) {
                return Close::write_failed(error);
            }
        }
        if let Err(error) = writer.flush().await {
            return Close::write_failed(error);
        }
        // A reload that removes this client's user from `auth:` ends the connection (watched
        // since before the login).

        loop {
            if let Some(close) = draining.take() {
                if self.queue.is_empty() {
                    return close;
                }
                draining = Some(close);
            }
            // 3.1.1 clients are held back at the cap. MQTT 5 clients promised to respect Receive
            // Maximum, so one more packet is read to catch a client that does not.
            let limit = match self.version {
                Version::V4 => cap,
                Version::V5 => cap + 1,
            };
            let may_read = draining.is_none() && self.queue.len() < limit;
            // Nothing in flight: the read buffer goes until the next packet arrives, so a quiet
            // connection costs no more than its task and session.
            if self.queue.is_empty() {
                reader.release();
            }
            // Time the proxy itself spends not reading (the connection at its receive maximum)
            // is not the client's silence: its keep-alive counts again from when reading resumes.
            if may_read && paused {
                heard = Instant::now();
            }
            paused = !may_read;

            tokio::select! {
                biased;
                Some(ack) = self.queue.next(), if !self.queue.is_empty() => {
                    // Deliveries finish in bursts (Kafka acknowledges a batch at once): every
                    // acknowledgement already due goes out in one write, not one write each. The
                    // rest of a burst is usually a moment away (librdkafka's thread completes a
                    // batch's reports one by one), so the connection yields once before writing.
                    let mut next = Some(ack);
                    let mut yielded = false;
                    loop {
                        while let Some(ack) = next {
                            if let Err(close) = self.acknowledge(ack, writer) {
                                let _ = writer.flush().await;
                                return close;
                            }
                            next = self.queue.next().now_or_never().flatten();
                        }
                        if yielded || self.queue.is_empty() {
                            break;
                        }
                        tokio::task::yield_now().await;
                        yielded = true;
                        next = self.queue.next().now_or_never().flatten();
                    }
                    if let Err(error) = writer.flush().await {
                        return Close::write_failed(error);
                    }
                }
                frame = reader.next(), if may_read => {
                    let result = match frame {
                        None => Err(Close::quiet("connection closed by client")),
                        Some(Err(error)) => Err(decode_close(error)),
                        Some(Ok(packet)) => self.handle(packet, writer).await,
                    };
                    if let Err(close) = result {
                        return close;
                    }
                    // Taken after handling, which may have waited for the in-flight budget: not the
                    // client's time.
                    heard = Instant::now();
                }
                Some(outbound) = self.session.outbox.recv(),
                    if draining.is_none() && self.session.outbound.len() < self.send_quota =>
                {
                    self.send(*outbound, writer);
                    // Whatever else is queued and allowed goes out in the same write.
                    while self.session.outbound.len() < self.send_quota {
                        match self.session.outbox.try_recv() {
                            Ok(outbound) => self.send(*outbound, writer),
                            Err(_) => break,
                        }
                    }
                    if let Err(error) = writer.flush().await {
                        return Close::write_failed(error);
                    }
                }
                _ = &mut deadline, if self.keep_alive.is_some() && draining.is_none() && may_read => {
                    let due = heard + self.keep_alive.unwrap_or_default();
                    if Instant::now() >= due {
                        return Close::with(DisconnectReasonCode::KeepAliveTimeout, "keep-alive expired");
                    }
                    deadline.as_mut().reset(due);
                }
                _ = &mut takeover, if draining.is_none() => {
                    draining = Some(Close::with(DisconnectReasonCode::SessionTakenOver, "another connection took over this client id"));
                }
                _ = crate::stopped(&mut shutdown), if draining.is_none() => {
                    draining = Some(Close::with(DisconnectReasonCode::ServerShuttingDown, "the proxy is shutting down"));
                }
                Ok(()) = generations.changed(), if draining.is_none() && self.identity.is_some() => {
                    let removed = self.identity.as_deref().is_some_and(|user| {
                        !self.ctx.pipeline.snapshot().auth().still_admits(user, self.method)
                    });
                    if removed {
                        tracing::info!(client_id = %self.client_id, identity = self.identity.as_deref(), "user removed from auth: disconnecting");
                        draining = Some(Close::with(DisconnectReasonCode::NotAuthorized, "the user was removed"));
                    }
                }
            }
        }
    }

    /// Pushes the acknowledgement for `ack` to `writer`; the caller flushes.
    fn acknowledge<W: AsyncWrite + Unpin>(
        &mut self,
        ack: Ack,
        writer: &mut Writer<W>,
    ) -> Result<(), Close> {
        if !ack.code.is_success() || ack.retry {
            tracing::debug!(client_id = %self.client_id, pkid = ack.pkid, qos = ack.qos, code = ?ack.code, reason = ?ack.reason, "not delivered");
        }
        if ack.qos == 0 {
            return Ok(());
        }
        self.unacked = self.unacked.saturating_sub(1);
        if ack.retry && self.version == Version::V4 {
            // 3.1.1 has no negative acknowledgement: closing makes the client resend.
            return Err(Close::quiet(format!(
                "message not delivered, closing so the client resends: {}",
                ack.reason.unwrap_or_default()
            )));
        }
        let packet = if ack.qos == 1 {
            Outgoing::PubAck {
                pkid: ack.pkid,
                code: ack.code,
                reason: ack.reason,
            }
        } else {
            self.qos2_pending.remove(&ack.pkid);
            if ack.code.is_success() {
                self.session.qos2_received.insert(ack.pkid);
            }
            Outgoing::PubRec {
                pkid: ack.pkid,
                code: ack.code,
                reason: ack.reason,
            }
        };
        writer.push(packet).map_err(Close::write_failed)
    }

    async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        packet: Incoming,
        writer: &mut Writer<W>,
    ) -> Result<(), Close> {
        match packet {
            Incoming::Publish(publish) => self.publish(publish, writer).await,
            Incoming::PubRel(pkid) => {
                let found = self.session.qos2_received.remove(&pkid);
                writer
                    .send(Outgoing::PubComp { pkid, found })
                    .await
                    .map_err(Close::write_failed)?;
                Ok(())
            }
            Incoming::PingReq => {
                writer
                    .send(Outgoing::PingResp)
                    .await
                    .map_err(Close::write_failed)?;
                Ok(())
            }
            Incoming::Subscribe { pkid, filters, id } => {
                let codes = filters.into_iter().map(|f| self.subscribe(f, id)).collect();
                writer
                    .send(Outgoing::SubAck { pkid, codes })
                    .await
                    .map_err(Close::write_failed)?;
                Ok(())
            }
            Incoming::Unsubscribe { pkid, filters } => {
                let found = filters
                    .iter()
                    .map(|f| {
                        self.session.subscriptions.remove(f);
                        self.ctx.clients.subscribers.unsubscribe(&self.client_id, f)
                    })
                    .collect();
                writer
                    .send(Outgoing::UnsubAck { pkid, found })
                    .await
                    .map_err(Close::write_failed)?;
                Ok(())
            }
            Incoming::PubAck { pkid, code } => {
                if let Some(in_flight) = self.session.outbound.remove(&pkid) {
                    in_flight.finish(&self.client_id, code);
                }
                Ok(())
            }
            Incoming::PubRec { pkid, code } => {
                if code >= 0x80 {
                    if let Some(in_flight) = self.session.outbound.remove(&pkid) {
                        in_flight.finish(&self.client_id, code);
                    }
                    return Ok(());
                }
                // Received: released now, complete on PUBCOMP. A PUBREC for an id the proxy does
                // not know is released all the same, so the client can forget it.
                if let Some(in_flight) = self.session.outbound.get_mut(&pkid) {
                    in_flight.released = true;
                }
                writer
                    .send(Outgoing::PubRel { pkid })
                    .await
                    .map_err(Close::write_failed)?;
                Ok(())
            }
            Incoming::PubComp(pkid) => {
                if let Some(in_flight) = self.session.outbound.remove(&pkid) {
                    in_flight.finish(&self.client_id, 0);
                }
                Ok(())
            }
            // Deliveries under way still finish (they are tasks of their own); the client no
            // longer waits for their acknowledgements.
            Incoming::Disconnect { with_will } => Err(Close {
                code: None,
                reason: "client disconnected".into(),
                publish_will: with_will,
            }),
            Incoming::Connect(_) | Incoming::UnsupportedProtocol(_) => Err(Close::with(
                DisconnectReasonCode::ProtocolError,
                "second CONNECT on one connection",
            )),
            Incoming::Unexpected(name) => Err(Close::with(
                DisconnectReasonCode::ProtocolError,
                format!("a client must not send {name} here"),
            )),
        }
    }

    /// Serves one filter of a SUBSCRIBE: checks it and the ACL, and adds it to the table.
    fn subscribe(&mut self, f: SubscribeFilter, id: Option<usize>) -> SubscribeCode {
        let parsed = match parse_filter(&f.filter) {
            Ok(p) => p,
            Err(error) => {
                tracing::debug!(client_id = %self.client_id, filter = f.filter, error, "subscription refused");
                return SubscribeCode::FilterInvalid;
            }
        };
        let inner = parsed.filter.to_string();
        if !self
            .ctx
            .pipeline
            .may_subscribe(self.identity.as_deref(), &self.client_id, &inner)
        {
            self.ctx.metrics.acl_denied("mqtt");
            tracing::info!(
                client_id = %self.client_id, identity = self.identity.as_deref(), filter = f.filter,
                "subscription denied by the ACL"
            );
            return SubscribeCode::NotAuthorized;
        }
        let qos = f.qos.min(2);
        self.ctx.clients.subscribers.subscribe(Subscription {
            client_id: self.client_id.clone(),
            session: self.session.id,
            parsed,
            qos,
            no_local: f.no_local,
            id,
            outbox: self.session.outbox_sender(),
        });
        self.session.subscriptions.insert(f.filter, qos);
        SubscribeCode::Granted(qos)
    }

    /// Writes one message to the client (into the write buffer; the caller flushes). A QoS 0
    /// message is done once written; QoS 1 and 2 wait in the in-flight table for the client's
    /// PUBACK or PUBCOMP.
    fn send<W: AsyncWrite + Unpin>(&mut self, out: Outbound, writer: &mut Writer<W>) {
        if out.done.is_closed() {
            // Its source stopped waiting (`ttl_ms`): it already counts as undelivered.
            return;
        }
        let pkid = if out.qos > 0 {
            self.session.next_packet_id()
        } else {
            0
        };
        let publish = OutgoingPublish {
            pkid,
            qos: out.qos,
            dup: false,
            topic: out.topic,
            payload: out.payload,
            properties: out.properties,
        };
        // Kept (payload shared, not copied) to send again if the session is resumed.
        let sent = OutgoingPublish {
            dup: true,
            ..publish.clone()
        };
        if let Err(error) = writer.push_checked(Outgoing::Publish(publish)) {
            // Larger than the client takes: it can never have it.
            let _ = out.done.send(Err(BrokerError::Permanent(format!(
                "client {:?} cannot take it: {error}",
                self.client_id
            ))));
            return;
        }
        if out.qos == 0 {
            let _ = out.done.send(Ok(()));
        } else {
            let order = self.session.next_order();
            self.session.outbound.insert(
                pkid,
                InFlight {
                    order,
                    publish: sent,
                    done: out.done,
                    released: false,
                },
            );
        }
    }

    async fn publish<W: AsyncWrite + Unpin>(
        &mut self,
        mut p: Publish,
        writer: &mut Writer<W>,
    ) -> Result<(), Close> {
        if p.qos > 0 {
            if self.version == Version::V5
                && self.unacked + self.session.qos2_received.len()
                    >= usize::from(self.ctx.settings.receive_maximum)
            {
                return Err(Close::with(
                    DisconnectReasonCode::ReceiveMaximumExceeded,
                    format!(
                        "more than {} unacknowledged messages",
                        self.ctx.settings.receive_maximum
                    ),
                ));
            }
            if p.qos == 2 {
                if self.session.qos2_received.contains(&p.pkid) {
                    // A resend whose PUBREC was lost: acknowledge again, deliver once.
                    writer
                        .send(Outgoing::PubRec {
                            pkid: p.pkid,
                            code: AckCode::Success,
                            reason: None,
                        })
                        .await
                        .map_err(Close::write_failed)?;
                    return Ok(());
                }
                if self.qos2_pending.contains(&p.pkid) {
                    // Already being delivered; its PUBREC follows when it is done.
                    return Ok(());
                }
            }
        }
        if self.version == Version::V5 {
            if p.retain {
                return Err(Close::with(
                    DisconnectReasonCode::RetainNotSupported,
                    "retained messages are not supported (CONNACK said so)",
                ));
            }
            if let Some(alias) = p.properties.topic_alias {
                if alias == 0 || alias > self.ctx.settings.topic_alias_maximum {
                    return Err(Close::with(
                        DisconnectReasonCode::TopicAliasInvalid,
                        format!(
                            "topic alias {alias} is outside 1..={}",
                            self.ctx.settings.topic_alias_maximum
                        ),
                    ));
                }
                if p.topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(topic) => p.topic = topic.clone(),
                        None => {
                            return Err(Close::with(
                                DisconnectReasonCode::ProtocolError,
                                format!("topic alias {alias} was never set"),
                            ));
                        }
                    }
                } else {
                    self.aliases.insert(alias, p.topic.clone());
                }
            }
        }
        if p.topic.is_empty() {
            return Err(Close::with(
                DisconnectReasonCode::ProtocolError,
                "PUBLISH with an empty topic",
            ));
        }

        let (qos, pkid) = (p.qos, p.pkid);
        if qos == 2 {
            self.qos2_pending.insert(pkid);
        }
        if qos > 0 {
            self.unacked += 1;
        }

        let allowed =
            self.ctx
                .pipeline
                .may_publish(self.identity.as_deref(), &self.client_id, &p.topic);
        let acked = if !allowed {
            // Denied before any plugin or broker sees it. A 3.1.1 client cannot be told: it gets
            // its PUBACK and the message is discarded, as mosquitto does.
            self.ctx.metrics.acl_denied("mqtt");
            tracing::info!(
                client_id = %self.client_id, identity = self.identity.as_deref(), topic = p.topic,
                "publish denied by the ACL"
            );
            let ack = Ack {
                qos,
                pkid,
                code: AckCode::NotAuthorized,
                reason: Some(format!("not authorised to publish to {:?}", p.topic)),
                retry: false,
            };
            future::ready(ack).boxed()
        } else if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // The spec lets a receiver check a payload that claims to be UTF-8 [MQTT-3.3.2-4].
            let ack = Ack {
                qos,
                pkid,
                code: AckCode::PayloadFormatInvalid,
                reason: Some("payload is marked UTF-8 but is not".into()),
                retry: false,
            };
            future::ready(ack).boxed()
        } else {
            let message = to_message(&self.client_id, self.identity.clone(), p);
            let budget = self.reserve(message.size(), writer).await?;
            // Routing, plugins and the hand-over to the producers run here, one message after
            // the other, so the connection's records reach each partition in PUBLISH order.
            let pending = self.ctx.pipeline.prepare(message).await;
            async move {
                let outcome = pending.outcome().await;
                drop(budget);
                ack_for(qos, pkid, outcome)
            }
            .boxed()
        };
        self.queue.push_back(acked);
        Ok(())
    }
}

/// The acknowledgement for an outcome; the table is in ARCHITECTURE.md.
fn ack_for(qos: u8, pkid: u16, outcome: Outcome) -> Ack {
    let (code, reason, retry) = match outcome {
        Outcome::Delivered => (AckCode::Success, None, false),
        Outcome::Dropped(r) => (AckCode::NoMatchingSubscribers, Some(r), false),
        Outcome::Rejected(Rejection::Unmatched, r) => (AckCode::TopicNameInvalid, Some(r), false),
        Outcome::Rejected(Rejection::Plugin, r) => {
            (AckCode::ImplementationSpecificError, Some(r), false)
        }
        Outcome::Rejected(Rejection::Undeliverable, r) => {
            (AckCode::ImplementationSpecificError, Some(r), false)
        }
        Outcome::Rejected(Rejection::PluginFailed, r) => {
            (AckCode::UnspecifiedError, Some(r), false)
        }
        Outcome::Rejected(Rejection::NotAuthorized, r) => (AckCode::NotAuthorized, Some(r), false),
        Outcome::Rejected(Rejection::NoSubscriber, r) => {
            (AckCode::NoMatchingSubscribers, Some(r), false)
        }
        Outcome::Failed(r) => (
            AckCode::UnspecifiedError,
            Some(format!("not delivered, try again: {r}")),
            true,
        ),
    };
    Ack {
        qos,
        pkid,
        code,
        reason,
        retry,
    }
}

fn decode_close(error: DecodeError) -> Close {
    let code = match &error {
        DecodeError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
        DecodeError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
        DecodeError::Protocol(_) => DisconnectReasonCode::ProtocolError,
        DecodeError::TopicInvalid(_) => DisconnectReasonCode::TopicNameInvalid,
        DecodeError::Io(_) => return Close::quiet(error.to_string()),
    };
    Close::with(code, error.to_string())
}

/// Publishes a Last Will through the pipeline, as a PUBLISH from its client would be, after its
/// delay (MQTT 5) unless the client has connected again by then. A shutdown cuts the delay short.
fn publish_will(ctx: &Context, client_id: Arc<str>, identity: Option<Arc<str>>, will: Will) {
    let pipeline = ctx.pipeline.clone();
    let clients = ctx.clients.clone();
    let metrics = ctx.metrics.clone();
    let mut shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        if will.delay > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(will.delay))) => {}
                _ = crate::stopped(&mut shutdown) => {}
            }
            if clients.live.is_live(&client_id) {
                tracing::debug!(client_id = %client_id, "client is back: will not published");
                return;
            }
        }
        let message = to_message(
            &client_id,
            identity.clone(),
            Publish {
                qos: will.qos,
                pkid: 0,
                retain: false,
                topic: will.topic,
                payload: will.payload,
                properties: will.properties,
            },
        );
        // A will that cannot be delivered for now is tried again, with backoff, while the proxy
        // runs: nobody is left to resend it. What a plugin or a broker refuses for good follows
        // the route's policies inside the dispatch, like any message.
        let mut backoff = WILL_RETRY_FIRST;
        loop {
            let outcome = pipeline.dispatch(message.clone()).await;
            let result = match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::Dropped(_) => "dropped",
                Outcome::Rejected(..) => "rejected",
                Outcome::Failed(_) => "retrying",
            };
            metrics.will(result);
            let Outcome::Failed(reason) = outcome else {
                tracing::debug!(client_id = %client_id, result, "will published");
                return;
            };
            if *shutdown.borrow() {
                metrics.will("abandoned");
                tracing::warn!(client_id = %client_id, %reason, "will not delivered before shutdown");
                return;
            }
            tracing::warn!(client_id = %client_id, %reason, retry_in = ?backoff, "will not delivered; trying again");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::stopped(&mut shutdown) => {}
            }
            backoff = (backoff * 2).min(WILL_RETRY_MAX);
        }
    });
}

/// The first wait before a will that could not be delivered is tried again; it doubles up to
/// [`WILL_RETRY_MAX`].
const WILL_RETRY_FIRST: Duration = Duration::from_millis(200);
const WILL_RETRY_MAX: Duration = Duration::from_secs(5);

/// Builds the message, carrying MQTT 5 properties into headers.
fn to_message(client_id: &Arc<str>, identity: Option<Arc<str>>, p: Publish) -> Message {
    let props = p.properties;
    let mut headers = Vec::with_capacity(props.user_properties.len() + 5);
    for (name, value) in props.user_properties {
        // The proxy's own headers come from the proxy only.
        if !is_reserved_header(&name) {
            headers.push(Header::new(name, Bytes::from(value)));
        }
    }
    if let Some(v) = props.content_type {
        headers.push(Header::new(well_known::CONTENT_TYPE, Bytes::from(v)));
    }
    if let Some(v) = props.correlation_data {
        headers.push(Header::new(well_known::CORRELATION_DATA, v));
    }
    if let Some(v) = props.response_topic {
        headers.push(Header::new(well_known::RESPONSE_TOPIC, Bytes::from(v)));
    }
    if let Some(v) = props.message_expiry_interval {
        headers.push(Header::new(
            well_known::MESSAGE_EXPIRY_INTERVAL,
            Bytes::from(v.to_string()),
        ));
    }
    if let Some(v) = props.payload_format_indicator {
        headers.push(Header::new(
            well_known::PAYLOAD_FORMAT_INDICATOR,
            Bytes::from(v.to_string()),
        ));
    }
    Message::new(
        Source {
            protocol: Protocol::Mqtt,
            client_id: client_id.clone(),
            topic: p.topic,
            qos: p.qos,
            identity,
        },
        headers,
        p.payload,
    )
}
