//! The AMQP 1.0 listener: connections, sessions and client sender links, each link a task that
//! turns transfers into messages and settles each one after its downstream outcome.
//!
//! Built on fe2o3-amqp's acceptor. Its receivers do not settle on their own: the disposition
//! (`accepted`, `rejected`, `released`) is sent when `Pipeline::dispatch` has the outcome, so a
//! client sees `accepted` only once every chosen destination has the message. Link credit is
//! re-granted only as dispositions go out, so a slow destination slows the sender down instead of
//! filling the proxy's memory.
//!
//! Addresses are routed like MQTT topics, split into levels at `/` (`from: "amqp:orders/+"`). A
//! sender link that attaches to an address no route takes is detached at once with `amqp:not-found`
//! (unless `unmatched` takes such messages). A link with no target address (the anonymous relay)
//! routes each message by its `to` property. A client's receiving link is served by
//! [`receivers`]: it gets what routes send to `amqp:ADDRESS` for its source address. A transfer
//! on a link the client never attached closes its connection with
//! `amqp:session:unattached-handle` (see `guard`).

pub(crate) mod convert;
mod guard;
pub mod receivers;
mod sasl;

/// Feeds `data` to a fresh frame guard (see [`crate::fuzzing`]).
pub(crate) fn fuzz_guard(data: &[u8]) {
    guard::fuzz_scan(data);
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::brokers::BrokerError;
use crate::brokers::amqp::close_step;
use fe2o3_amqp::acceptor::{ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SessionAcceptor};
use fe2o3_amqp::link::RecvError;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::{Receiver, Sender};
use fe2o3_amqp_types::definitions::{self, AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp_types::messaging::{Body, Outcome as AmqpOutcome};
use fe2o3_amqp_types::primitives::Value;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::edge::Prefixed;
use crate::edge::auth::{Login, Method};
use crate::edge::tls::{PeerCertificate, TlsAcceptor, TlsConfig};
use crate::limits::Limits;
use crate::message::{Message, Outcome, Protocol, Rejection, Source};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::router::UnmatchedPolicy;

use sasl::{Identity, Sasl};

/// How long a new connection may take to finish its SASL and AMQP handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The container id this listener announces in its Open frame.
const CONTAINER_ID: &str = "barnabas";

/// A bound AMQP listener, not yet accepting.
pub struct AmqpListener {
    listener: TcpListener,
    settings: Arc<AmqpListenerConfig>,
    tls: Option<Arc<TlsAcceptor>>,
}

/// What every connection task shares.
#[derive(Clone)]
struct Context {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    settings: Arc<AmqpListenerConfig>,
    /// Every client's receiving links (shared by all AMQP listeners and the `amqp` destination).
    receivers: Arc<receivers::Receivers>,
    shutdown: watch::Receiver<bool>,
    tracker: TaskTracker,
}

impl AmqpListener {
    /// Binds `settings.bind`; `tls` is the listener's loaded certificate when it has `tls:`.
    pub async fn bind(
        settings: AmqpListenerConfig,
        tls: Option<Arc<TlsAcceptor>>,
    ) -> std::io::Result<Self> {
        Ok(AmqpListener {
            listener: TcpListener::bind(settings.bind).await?,
            settings: Arc::new(settings),
            tls,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` turns true. Connection, session and link tasks and
    /// the dispatches they start run on `tracker`, so a shutdown waits for them.
    pub async fn run(
        self,
        pipeline: Arc<Pipeline>,
        receivers: Arc<receivers::Receivers>,
        metrics: Arc<Metrics>,
        limits: Arc<Limits>,
        mut shutdown: watch::Receiver<bool>,
        tracker: TaskTracker,
    ) {
        let limit = limits.listener(&self.settings.name, self.settings.max_connections);
        let ctx = Context {
            pipeline,
            metrics,
            limits,
            receivers,
            settings: self.settings.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Over the limit the socket is closed before anything is read from it.
                        let Some(permit) = limit.admit() else {
                            continue;
                        };
                        let ctx = ctx.clone();
                        let tls = self.tls.clone();
                        tracker.spawn(async move {
                            serve_tcp(stream, peer, ctx, tls).await;
                            drop(permit);
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "amqp accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = crate::stopped(&mut shutdown) => break,
            }
        }
    }
}

/// Serves one accepted socket: TLS first on a TLS listener, then AMQP.
async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Context,
    tls: Option<Arc<TlsAcceptor>>,
) {
    // fe2o3 never sets it; without it every disposition waits for Nagle and delayed ACKs.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let Some(tls) = tls else {
        serve_connection(stream, peer, ctx, None).await;
        return;
    };
    let name = &ctx.settings.name;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok((stream, certificate))) => {
            ctx.metrics.tls_handshake(name, "ok");
            serve_connection(stream, peer, ctx, certificate).await;
        }
        Ok(Err(error)) => {
            ctx.metrics.tls_handshake(name, "failed");
            tracing::debug!(%peer, listener = %name, %error, "tls handshake failed");
        }
        Err(_) => {
            ctx.metrics.tls_handshake(name, "timeout");
            tracing::debug!(%peer, listener = %name, "tls handshake timed out");
        }
    }
}

/// Serves one connection over `stream` (TCP or TLS). `certificate` is the client's TLS
/// certificate, verified, when it sent one.
async fn serve_connection<S>(
    mut stream: S,
    peer: SocketAddr,
    mut ctx: Context,
    certificate: Option<PeerCertificate>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug + 'static,
{
    let _open = ctx.metrics.connection_opened(&ctx.settings.name);
    // Watched from before the login, so that a reload landing between the login and the
    // connection loop is not missed (a user removed then is disconnected all the same).
    let mut generations = ctx.pipeline.generations();
    // The `auth:` of the config serving now: a reload applies to the next login.
    let auth = ctx.pipeline.snapshot().auth().clone();
    // A verified client certificate that names its client when `client_certs` is set: the
    // identity of a client that skips SASL, and what SASL EXTERNAL logs in as.
    let cert_login = certificate
        .as_ref()
        .and_then(|c| auth.login_certificate(c, &ctx.limits));
    // A client that skips SASL sends the plain AMQP header (protocol id 0); it is served when
    // anonymous access is allowed or its certificate logged it in, otherwise it gets the SASL
    // header and must log in.
    let mut header = [0u8; 8];
    if !matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut header)).await,
        Ok(Ok(_))
    ) {
        tracing::debug!(%peer, "no AMQP header in time");
        return;
    }
    let certified = matches!(cert_login, Some(Login::User(_)));
    let plain = (auth.anonymous || certified) && header[..5] == *b"AMQP\0";
    let stream = Prefixed::new(header.to_vec(), stream);
    // One acceptor per connection: the SASL acceptor records who logged in.
    let sasl = Sasl::new(auth, peer.ip(), ctx.limits.clone(), cert_login.clone());
    // The guard answers transfers on unattached links, which fe2o3 drops without a word.
    let stream = guard::Guarded::new(stream);
    let handshake = async {
        // Sessions per connection and silence are bounded: a client cannot make the proxy hold
        // unbounded session state, nor a connection that stopped talking.
        let settings = &ctx.settings;
        let builder = ConnectionAcceptor::builder()
            .container_id(CONTAINER_ID)
            .channel_max(settings.channel_max.saturating_sub(1))
            .idle_time_out(u32::try_from(settings.idle_timeout.as_millis()).unwrap_or(u32::MAX));
        if plain {
            builder.build().accept(stream).await
        } else {
            builder
                .sasl_acceptor(sasl.clone())
                .build()
                .accept(stream)
                .await
        }
    };
    let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(error)) => {
            match sasl.identity() {
                Some(Identity::Refused(user)) => {
                    tracing::info!(%peer, user, "amqp login refused")
                }
                Some(Identity::Throttled(user)) => {
                    tracing::debug!(%peer, user, "amqp login refused unchecked: too many failures")
                }
                _ => tracing::debug!(%peer, %error, "amqp handshake failed"),
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "amqp handshake timed out");
            return;
        }
    };
    let logged_in = match (plain, sasl.identity(), cert_login) {
        (true, _, Some(Login::User(user))) => Some((user, Method::Certificate)),
        (false, Some(Identity::User(user)), _) => Some((user, Method::Password)),
        (false, Some(Identity::Certificate(user)), _) => Some((user, Method::Certificate)),
        _ => None,
    };
    let (client_id, identity, method): (Arc<str>, Option<Arc<str>>, Method) = match logged_in {
        Some((user, method)) => {
            let user: Arc<str> = Arc::from(user);
            (user.clone(), Some(user), method)
        }
        None => (
            Arc::from(format!("anonymous@{peer}")),
            None,
            Method::Password,
        ),
    };
    let client = Client {
        id: client_id.clone(),
        identity,
    };
    tracing::debug!(%peer, client = %client_id, "amqp connection open");

    // Links per session are bounded by handle-max, which the client is told in `begin`.
    let sessions = SessionAcceptor::builder()
        .handle_max(ctx.settings.handle_max.saturating_sub(1))
        .build();
    // A reload that removes this client's user from `auth:` ends the connection.
    let mut removed = false;
    loop {
        tokio::select! {
            Ok(()) = generations.changed(), if client.identity.is_some() => {
                removed = client.identity.as_deref().is_some_and(|user| {
                    !ctx.pipeline.snapshot().auth().still_admits(user, method)
                });
                if removed {
                    tracing::info!(%peer, client = %client.id, "user removed from auth: closing");
                    break;
                }
            }
            session = sessions.accept(&mut connection) => match session {
                Ok(session) => {
                    let ctx = ctx.clone();
                    ctx.tracker.clone().spawn(serve_session(session, client.clone(), ctx));
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "amqp connection ended");
                    break;
                }
            },
            _ = crate::stopped(&mut ctx.shutdown) => break,
        }
    }
    if removed {
        let error = definitions::Error::new(
            AmqpError::UnauthorizedAccess,
            Some("the user was removed".into()),
            None,
        );
        close_step(connection.close_with_error(error)).await;
    } else {
        close_step(connection.close()).await;
    }
}

/// Who is on the other end of a connection.
#[derive(Clone)]
struct Client {
    /// The PLAIN user name, or `anonymous@IP:PORT`.
    id: Arc<str>,
    /// The identity it logged in as; `None` when anonymous.
    identity: Option<Arc<str>>,
}

async fn serve_session(
    mut session: fe2o3_amqp::acceptor::ListenerSessionHandle,
    client: Client,
    mut ctx: Context,
) {
    let links = LinkAcceptor::builder()
        .max_message_size(ctx.settings.max_message_size)
        .build();
    loop {
        tokio::select! {
            link = links.accept(&mut session) => match link {
                Ok(LinkEndpoint::Receiver(receiver)) => {
                    let ctx = ctx.clone();
                    ctx.tracker.clone().spawn(serve_link(receiver, client.clone(), ctx));
                }
                Ok(LinkEndpoint::Sender(sender)) => {
                    let ctx = ctx.clone();
                    ctx.tracker.clone().spawn(serve_receiving_link(sender, client.clone(), ctx));
                }
                Err(error) => {
                    tracing::debug!(%error, "amqp session ended");
                    return;
                }
            },
            _ = crate::stopped(&mut ctx.shutdown) => break,
        }
    }
    close_step(session.end()).await;
}

/// A client's receiving link (the proxy's sender): registered for its source address, it sends
/// what routes deliver to `amqp:ADDRESS` there, one message at a time, each settled by the
/// client before the next goes.
async fn serve_receiving_link(mut sender: Sender, client: Client, mut ctx: Context) {
    let address = sender.source().as_ref().and_then(|s| s.address.clone());
    let refuse = |condition, reason: String| definitions::Error::new(condition, Some(reason), None);
    let Some(address) = address else {
        let error = refuse(
            AmqpError::InvalidField,
            "a receiving link needs a source address".into(),
        );
        close_step(sender.close_with_error(error)).await;
        return;
    };
    let filter = match crate::router::TopicFilter::parse(&address) {
        Ok(f) => f,
        Err(e) => {
            close_step(sender.close_with_error(refuse(AmqpError::InvalidField, e))).await;
            return;
        }
    };
    if !ctx
        .pipeline
        .may_subscribe(client.identity.as_deref(), &client.id, &address)
    {
        ctx.metrics.acl_denied("amqp");
        tracing::info!(client = %client.id, address, "receiving link denied by the ACL");
        let reason = format!("not authorised to receive from {address:?}");
        close_step(sender.close_with_error(refuse(AmqpError::UnauthorizedAccess, reason))).await;
        return;
    }
    let (id, mut queue) = ctx.receivers.attach(client.id.clone(), filter);
    loop {
        tokio::select! {
            outbound = queue.recv() => {
                let Some(outbound) = outbound else { break };
                if outbound.done.is_closed() {
                    // Its source stopped waiting: it already counts as undelivered.
                    continue;
                }
                let result = match sender.send(outbound.message).await {
                    Ok(AmqpOutcome::Accepted(_)) => Ok(()),
                    Ok(AmqpOutcome::Rejected(r)) => Err(BrokerError::Permanent(format!(
                        "AMQP client {:?} rejected it: {:?}",
                        client.id, r.error
                    ))),
                    Ok(other) => Err(BrokerError::Retriable(format!(
                        "AMQP client {:?} did not accept it: {other:?}",
                        client.id
                    ))),
                    Err(error) => {
                        let _ = outbound.done.send(Err(BrokerError::Retriable(format!(
                            "AMQP client {:?} link failed: {error}",
                            client.id
                        ))));
                        break;
                    }
                };
                let _ = outbound.done.send(result);
            }
            _ = sender.on_detach() => break,
            _ = crate::stopped(&mut ctx.shutdown) => break,
        }
    }
    // Messages still queued fail for their sources as the queue is dropped.
    ctx.receivers.detach(id);
    close_step(sender.close()).await;
}

/// Detaches a client sender link at attach with `condition`.
async fn refuse_link(receiver: Receiver, condition: AmqpError, reason: String) {
    let error = definitions::Error::new(condition, Some(reason), None);
    close_step(receiver.close_with_error(error)).await;
}

/// One client sender link: receive, dispatch, settle.
async fn serve_link(mut receiver: Receiver, client: Client, mut ctx: Context) {
    let client_id = client.id.clone();
    let address = receiver.target().as_ref().and_then(|t| t.address.clone());
    if let Some(address) = &address {
        let snapshot = ctx.pipeline.snapshot();
        // The ACL is asked once for a link with an address: every transfer on it goes there.
        if !snapshot
            .auth()
            .may_publish(client.identity.as_deref(), &client.id, address)
        {
            ctx.metrics.acl_denied("amqp");
            tracing::info!(client = %client.id, address, "attach denied by the ACL");
            let reason = format!("not authorised to publish to {address:?}");
            refuse_link(receiver, AmqpError::UnauthorizedAccess, reason).await;
            return;
        }
        let routable = snapshot.routes().select(Protocol::Amqp, address).is_some()
            || !matches!(snapshot.unmatched(), UnmatchedPolicy::Reject);
        if !routable {
            let reason = format!("no route takes amqp:{address}");
            refuse_link(receiver, AmqpError::NotFound, reason).await;
            return;
        }
    }
    let credit = ctx.settings.credit;
    if receiver.set_credit(credit).await.is_err() {
        return;
    }
    let mut pending = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            delivery = receiver.recv::<Body<Value>>(), if !stopping && pending.len() < credit as usize => {
                match delivery {
                    Ok(delivery) => {
                        let (info, msg) = delivery.into_parts();
                        let (headers, key, payload) = convert::from_amqp(msg);
                        let to = headers
                            .iter()
                            .find(|h| h.name == crate::message::well_known::TO)
                            .map(|h| String::from_utf8_lossy(&h.value).into_owned());
                        let Some(topic) = address.clone().or(to) else {
                            let outcome = Outcome::Rejected(
                                Rejection::Unmatched,
                                "the link has no target address and the message no `to`".into(),
                            );
                            settle(&receiver, info, outcome).await;
                            continue;
                        };
                        // A link without an address (the anonymous relay) is asked per message.
                        if address.is_none()
                            && !ctx.pipeline.may_publish(
                                client.identity.as_deref(),
                                &client.id,
                                &topic,
                            )
                        {
                            ctx.metrics.acl_denied("amqp");
                            let outcome = Outcome::Rejected(
                                Rejection::NotAuthorized,
                                format!("not authorised to publish to {topic:?}"),
                            );
                            settle(&receiver, info, outcome).await;
                            continue;
                        }
                        let source = Source {
                            protocol: Protocol::Amqp,
                            client_id: client_id.clone(),
                            topic,
                            qos: 1,
                            identity: client.identity.clone(),
                        };
                        let mut message = Message::new(source, headers, payload);
                        message.key = key;
                        // While the in-flight budget is spent this waits and the link takes no
                        // more transfers (its credit is not renewed): the sender is slowed down.
                        // Meanwhile the link goes on settling what finishes, since a delivery
                        // gives its bytes back when its wait ends.
                        let reserve = ctx.limits.reserve(message.size());
                        tokio::pin!(reserve);
                        let budget = loop {
                            tokio::select! {
                                biased;
                                budget = &mut reserve => break budget,
                                Some((info, outcome)) = pending.next(), if !pending.is_empty() => {
                                    settle(&receiver, info, outcome).await;
                                }
                            }
                        };
                        // Routing, plugins and the hand-over to the producers run here, one
                        // transfer after the other, so the link's records reach every partition
                        // in transfer order; only the waits for acknowledgements overlap.
                        let prepared = ctx.pipeline.prepare(message).await;
                        pending.push(async move {
                            let outcome = prepared.outcome().await;
                            drop(budget);
                            (info, outcome)
                        });
                    }
                    Err(RecvError::MessageSizeExceeded(error)) => {
                        // fe2o3 has detached the link with amqp:link:message-size-exceeded.
                        tracing::debug!(client = %client_id, %error, "amqp message too large");
                        stopping = true;
                    }
                    Err(RecvError::LinkStateError(error)) => {
                        tracing::debug!(client = %client_id, ?error, "amqp link ended");
                        stopping = true;
                    }
                    Err(error) => {
                        tracing::debug!(client = %client_id, %error, "amqp transfer refused");
                        let condition = match error {
                            RecvError::TransferLimitExceeded => {
                                ErrorCondition::LinkError(LinkError::TransferLimitExceeded)
                            }
                            _ => ErrorCondition::AmqpError(AmqpError::DecodeError),
                        };
                        let error = definitions::Error::new(condition, Some(error.to_string()), None);
                        // Settle what is under way before the link goes.
                        while let Some((info, outcome)) = pending.next().await {
                            settle(&receiver, info, outcome).await;
                        }
                        close_step(receiver.close_with_error(error)).await;
                        return;
                    }
                }
            }
            Some((info, outcome)) = pending.next(), if !pending.is_empty() => {
                settle(&receiver, info, outcome).await;
            }
            _ = crate::stopped(&mut ctx.shutdown), if !stopping => stopping = true,
            else => break,
        }
        if stopping && pending.is_empty() {
            break;
        }
    }
    close_step(receiver.close()).await;
}

/// Sends the disposition for one outcome; the table is in ARCHITECTURE.md.
async fn settle(receiver: &Receiver, info: DeliveryInfo, outcome: Outcome) {
    let result = match outcome {
        // Nobody subscribed is how MQTT says "dropped" (0x10): accepted here too.
        Outcome::Delivered
        | Outcome::Dropped(_)
        | Outcome::Rejected(Rejection::NoSubscriber, _) => receiver.accept(info).await,
        Outcome::Rejected(why, reason) => {
            let condition = match why {
                Rejection::Unmatched => AmqpError::NotFound,
                Rejection::Plugin => AmqpError::PreconditionFailed,
                Rejection::PluginFailed => AmqpError::InternalError,
                Rejection::Undeliverable => AmqpError::NotAllowed,
                Rejection::NotAuthorized => AmqpError::UnauthorizedAccess,
                Rejection::NoSubscriber => AmqpError::NotFound,
            };
            let error = definitions::Error::new(condition, Some(reason), None);
            receiver.reject(info, error).await
        }
        Outcome::Failed(_) => receiver.release(info).await,
    };
    if let Err(error) = result {
        tracing::debug!(?error, "amqp disposition not sent");
    }
}

/// A listener speaking AMQP 1.0: `listeners.amqp`, or one with `protocol: amqp`.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpListenerConfig {
    /// Its name under `listeners:` (in logs and metrics).
    pub name: String,
    /// The address to listen on.
    pub bind: SocketAddr,
    /// TLS, when set (`amqps`): every connection starts with a TLS handshake.
    pub tls: Option<TlsConfig>,
    /// The largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Link credit per client sender: how many unsettled transfers a link may have in flight.
    pub credit: u32,
    /// Open connections on this listener (also bounded by `limits.max_connections`).
    pub max_connections: u32,
    /// Sessions per connection (the highest channel number is one less).
    pub channel_max: u16,
    /// Links per session (the highest handle is one less).
    pub handle_max: u32,
    /// How long a connection may send nothing (the client is told half of it as our idle
    /// timeout and must send at least an empty frame that often).
    pub idle_timeout: Duration,
}
