//! AMQP 1.0 brokers (RabbitMQ, ActiveMQ Artemis, Qpid) as a destination.
//!
//! One task owns the destination's connection, one session and a sender link per address, opened
//! on first use and reused. Each record is sent unsettled and the broker's disposition is the
//! acknowledgement: `accepted` is success; `rejected` is a permanent failure; `released`,
//! `modified`, a lost link, session or connection, or no disposition in time are retriable. After
//! a failure the task reconnects (with backoff while the broker stays away) and begins a new
//! session: RabbitMQ 3.x ends the whole session when a link names a bad address.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use fe2o3_amqp::Sender;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Outcome as AmqpOutcome;
use fe2o3_amqp_types::messaging::annotations::OwnedKey;
use fe2o3_amqp_types::messaging::{
    AmqpValue, ApplicationProperties, Body, Data, Message, MessageAnnotations, MessageId,
    Properties, Target, TerminusDurability,
};
use fe2o3_amqp_types::primitives::{Binary, SimpleValue, Symbol, Value};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{AmqpConfig, ClientTls};
use crate::brokers::{Ack, BrokerError, Delivery, Destination};
use crate::message::{Protocol, well_known};

/// How long connecting, beginning a session or attaching a link may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between reconnection attempts while the broker stays away.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Records waiting for the connection task.
const QUEUE: usize = 1024;

/// An AMQP broker this proxy sends to.
pub struct AmqpDestination {
    requests: mpsc::Sender<Request>,
    /// How long a record may take from `enqueue` to the broker's outcome.
    timeout: Duration,
}

enum Request {
    /// A record, the answer's way back, and when the record counts as failed: the connection
    /// task gives up on it then, whether it is waiting for the connection, for link credit (a
    /// broker under a memory alarm grants none) or for the outcome.
    Send(Delivery, oneshot::Sender<Result<(), BrokerError>>, Instant),
    Probe(oneshot::Sender<Result<(), BrokerError>>),
}

impl AmqpDestination {
    /// Starts the connection task. It connects on first use: an unreachable broker shows up as
    /// failed deliveries, not here.
    pub fn new(name: &str, config: &AmqpConfig) -> Self {
        let (requests, rx) = mpsc::channel(QUEUE);
        let owner = Owner {
            name: name.to_string(),
            url: config.url.clone(),
            tls: config.tls.clone(),
            shown: config.redacted_url(),
            link: None,
            backoff: Duration::ZERO,
            retry_at: Instant::now(),
            last_error: String::new(),
        };
        tokio::spawn(owner.run(rx));
        AmqpDestination {
            requests,
            timeout: config.timeout,
        }
    }
}

fn stopped() -> BrokerError {
    BrokerError::Retriable("AMQP destination stopped".into())
}

impl Destination for AmqpDestination {
    fn enqueue(&self, delivery: Delivery) -> BoxFuture<'_, Result<Ack, BrokerError>> {
        async move {
            // The connection task takes requests in order, so the queue's order is the order the
            // records reach the broker. A full queue (the task stuck on a broker that does not
            // answer) is waited on only until the record's deadline.
            let deadline = Instant::now() + self.timeout;
            let (reply, answer) = oneshot::channel();
            match tokio::time::timeout_at(
                deadline,
                self.requests.send(Request::Send(delivery, reply, deadline)),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(stopped()),
                Err(_) => {
                    return Err(timed_out(
                        self.timeout,
                        "waiting for the AMQP destination's queue",
                    ));
                }
            }
            let timeout = self.timeout;
            let ack = async move {
                match tokio::time::timeout_at(deadline, answer).await {
                    Ok(result) => result.unwrap_or_else(|_| Err(stopped())),
                    Err(_) => Err(timed_out(timeout, "waiting for the AMQP broker")),
                }
            };
            Ok(ack.boxed())
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let requests = self.requests.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            requests
                .send(Request::Probe(reply))
                .await
                .map_err(|_| stopped())?;
            answer.await.unwrap_or_else(|_| Err(stopped()))
        }
        .boxed()
    }
}

fn timed_out(timeout: Duration, what: &str) -> BrokerError {
    BrokerError::Retriable(format!("not settled within {timeout:?}: {what}"))
}

/// An open connection with its session and the sender links opened so far.
struct Link {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    senders: HashMap<String, Sender>,
}

/// The task that owns the connection.
struct Owner {
    name: String,
    url: String,
    tls: ClientTls,
    shown: String,
    link: Option<Link>,
    backoff: Duration,
    retry_at: Instant,
    last_error: String,
}

impl Owner {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        while let Some(request) = requests.recv().await {
            match request {
                Request::Probe(reply) => {
                    let _ = reply.send(self.connected().await.map(|_| ()));
                }
                Request::Send(delivery, reply, deadline) => {
                    if reply.is_closed() || Instant::now() >= deadline {
                        // Its sender has already been told it failed.
                        continue;
                    }
                    // One retry on a fresh connection: a link or session the broker closed since
                    // the last record (or a connection that died idle) should not fail a record.
                    let mut result = self.send(&delivery, deadline).await;
                    if let Err(Retry(_)) = &result {
                        result = self.send(&delivery, deadline).await;
                    }
                    match result {
                        Ok(pending) => {
                            tokio::spawn(async move {
                                let _ = reply.send(pending.await);
                            });
                        }
                        Err(Retry(e)) | Err(Fail(e)) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
        if let Some(mut link) = self.link.take() {
            for (_, sender) in link.senders.drain() {
                super::close_step(sender.close()).await;
            }
            super::close_step(link.session.end()).await;
            super::close_step(link.connection.close()).await;
        }
    }

    /// The open connection, opening it if the backoff allows.
    async fn connected(&mut self) -> Result<&mut Link, BrokerError> {
        if self.link.is_none() {
            if Instant::now() < self.retry_at {
                return Err(BrokerError::Retriable(format!(
                    "AMQP broker {} unavailable: {}",
                    self.shown, self.last_error
                )));
            }
            match tokio::time::timeout(OPEN_TIMEOUT, self.open()).await {
                Ok(Ok(link)) => {
                    tracing::info!(destination = %self.name, url = %self.shown, "AMQP connection open");
                    self.backoff = Duration::ZERO;
                    self.link = Some(link);
                }
                Ok(Err(e)) => return Err(self.failed_to_open(e)),
                Err(_) => return Err(self.failed_to_open("timed out".into())),
            }
        }
        self.link
            .as_mut()
            .ok_or_else(|| BrokerError::Retriable("not connected".into()))
    }

    fn failed_to_open(&mut self, error: String) -> BrokerError {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), MAX_BACKOFF);
        self.retry_at = Instant::now() + self.backoff;
        tracing::warn!(destination = %self.name, url = %self.shown, %error, retry_in = ?self.backoff, "cannot connect to AMQP broker");
        self.last_error = error;
        BrokerError::Retriable(format!(
            "AMQP broker {} unavailable: {}",
            self.shown, self.last_error
        ))
    }

    async fn open(&self) -> Result<Link, String> {
        let (connection, session) =
            super::connect(&format!("barnabas-{}", self.name), &self.url, &self.tls).await?;
        Ok(Link {
            connection,
            session,
            senders: HashMap::new(),
        })
    }

    /// Hands one record to the broker; the returned future resolves on its disposition.
    async fn send(&mut self, delivery: &Delivery, deadline: Instant) -> Result<Ack, Attempt> {
        let name = self.name.clone();
        let link = self.connected().await.map_err(Fail)?;
        if !link.senders.contains_key(&delivery.address) {
            // A durable terminus: RabbitMQ 3.x declares the queue behind `/queue/NAME` with the
            // target's durability, and a non-durable queue loses accepted messages on a restart.
            let target = Target::builder()
                .address(delivery.address.clone())
                .durable(TerminusDurability::Configuration)
                .build();
            let attach = Sender::builder()
                .name(format!("barnabas-{name}-{}", delivery.address))
                .target(target)
                .attach(&mut link.session);
            match tokio::time::timeout(OPEN_TIMEOUT, attach).await {
                Ok(Ok(sender)) => {
                    link.senders.insert(delivery.address.clone(), sender);
                }
                Ok(Err(e)) => {
                    // The broker refused the address (RabbitMQ then ends the whole session):
                    // start over with a new connection for the next record.
                    let error = format!("AMQP address {:?} refused: {e}", delivery.address);
                    self.drop_link().await;
                    return Err(Fail(BrokerError::Permanent(error)));
                }
                Err(_) => {
                    self.drop_link().await;
                    return Err(Retry(BrokerError::Retriable(format!(
                        "AMQP attach to {:?} timed out",
                        delivery.address
                    ))));
                }
            }
        }
        let Some(sender) = link.senders.get_mut(&delivery.address) else {
            return Err(Fail(BrokerError::Retriable("no sender link".into())));
        };
        let message = to_amqp(delivery);
        // `send_batchable` waits for link credit, which a broker under a memory alarm does not
        // grant: the wait ends at the record's deadline, and the link, in an unknown state after
        // the cancelled send, is dropped.
        let sent = match tokio::time::timeout_at(deadline, sender.send_batchable(message)).await {
            Ok(sent) => sent,
            Err(_) => {
                self.drop_link().await;
                return Err(Fail(BrokerError::Retriable(format!(
                    "AMQP broker granted no link credit for {:?} in time",
                    delivery.address
                ))));
            }
        };
        match sent {
            Ok(pending) => Ok(async move {
                match tokio::time::timeout_at(deadline, pending).await {
                    Ok(Ok(AmqpOutcome::Accepted(_))) => Ok(()),
                    Ok(Ok(AmqpOutcome::Rejected(r))) => Err(BrokerError::Permanent(format!(
                        "AMQP broker rejected it: {}",
                        r.error
                            .map(|e| format!(
                                "{:?} {}",
                                e.condition,
                                e.description.unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    ))),
                    Ok(Ok(AmqpOutcome::Released(_))) => {
                        Err(BrokerError::Retriable("AMQP broker released it".into()))
                    }
                    Ok(Ok(AmqpOutcome::Modified(_))) => {
                        Err(BrokerError::Retriable("AMQP broker modified it".into()))
                    }
                    #[allow(unreachable_patterns)]
                    Ok(Ok(other)) => Err(BrokerError::Retriable(format!(
                        "AMQP broker answered {other:?}"
                    ))),
                    Ok(Err(e)) => Err(BrokerError::Retriable(format!("AMQP send failed: {e}"))),
                    Err(_) => Err(BrokerError::Retriable(
                        "AMQP broker did not settle it in time".into(),
                    )),
                }
            }
            .boxed()),
            Err(SendError::MessageSizeExceeded(e)) => Err(Fail(BrokerError::Permanent(format!(
                "AMQP message too large: {e}"
            )))),
            Err(e) => {
                // The link, session or connection is gone: reconnect and try once more.
                let error = format!("AMQP send failed: {e}");
                self.drop_link().await;
                Err(Retry(BrokerError::Retriable(error)))
            }
        }
    }

    async fn drop_link(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.senders.clear();
            let _ = tokio::time::timeout(Duration::from_millis(200), link.session.end()).await;
            let _ = tokio::time::timeout(Duration::from_millis(200), link.connection.close()).await;
        }
    }
}

/// Whether a failed attempt may be retried at once on a new connection.
enum Attempt {
    Retry(BrokerError),
    Fail(BrokerError),
}
use Attempt::{Fail, Retry};

/// A record as an AMQP message. Well-known headers become properties (content type, correlation
/// data, response topic, message id, subject); `x-opt-*` headers become message annotations; the
/// rest, origin headers included, become application properties. The payload is a `data`
/// section, or an `amqp-value` again when it came from one.
pub(crate) fn to_amqp(delivery: &Delivery) -> Message<Body<Value>> {
    let mut properties = Properties::default();
    let mut annotations = fe2o3_amqp_types::messaging::Annotations::new();
    let mut application = fe2o3_amqp_types::primitives::OrderedMap::new();
    let mut body_kind = None;
    let own = delivery
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_ref()));
    for (name, value) in own.chain(
        delivery
            .source
            .origin_headers()
            .map(|(n, v)| (n as &str, v)),
    ) {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            well_known::CONTENT_TYPE => properties.content_type = Some(Symbol::from(text())),
            well_known::CORRELATION_DATA => {
                properties.correlation_id = Some(match std::str::from_utf8(value) {
                    Ok(s) => MessageId::String(s.to_string()),
                    Err(_) => MessageId::Binary(Binary::from(value.to_vec())),
                })
            }
            well_known::RESPONSE_TOPIC => properties.reply_to = Some(text()),
            well_known::MESSAGE_ID => properties.message_id = Some(MessageId::String(text())),
            well_known::SUBJECT => properties.subject = Some(text()),
            well_known::AMQP_BODY => body_kind = Some(text()),
            // The address the record goes to is the link's; the original `to` stays a header.
            well_known::TO => {
                application.insert("to".to_string(), SimpleValue::String(text()));
            }
            name if name.starts_with("x-opt-") => {
                annotations.insert(OwnedKey::Symbol(Symbol::from(name)), header_value(value));
            }
            name => {
                let value = match std::str::from_utf8(value) {
                    Ok(s) => SimpleValue::String(s.to_string()),
                    Err(_) => SimpleValue::Binary(Binary::from(value.to_vec())),
                };
                application.insert(name.to_string(), value);
            }
        }
    }
    let body = match (delivery.source.protocol, body_kind.as_deref()) {
        (Protocol::Amqp, Some("amqp-value")) => match std::str::from_utf8(&delivery.payload) {
            Ok(s) => Body::Value(AmqpValue(Value::String(s.to_string()))),
            Err(_) => Body::Value(AmqpValue(Value::Binary(Binary::from(
                delivery.payload.to_vec(),
            )))),
        },
        _ => Body::Data(vec![Data(Binary::from(delivery.payload.to_vec()))].into()),
    };
    Message {
        // Durable: a broker that acknowledged it keeps it across a restart.
        header: Some(fe2o3_amqp_types::messaging::Header {
            durable: true,
            ..Default::default()
        }),
        delivery_annotations: None,
        message_annotations: (!annotations.is_empty()).then_some(MessageAnnotations(annotations)),
        properties: Some(properties),
        application_properties: (!application.is_empty())
            .then_some(ApplicationProperties(application)),
        body,
        footer: None,
    }
}

fn header_value(value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::Binary(Binary::from(value.to_vec())),
    }
}
