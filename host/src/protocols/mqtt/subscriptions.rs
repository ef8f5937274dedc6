//! The proxy's MQTT subscriptions, across every MQTT listener, and the built-in `mqtt`
//! destination that delivers to them.
//!
//! A route's `to: "mqtt:TOPIC"` hands a record to [`Subscribers`] as it would to a broker: the
//! subscriptions whose filter matches TOPIC are found, one [`Outbound`] message goes into each
//! matching client's session queue, and the acknowledgement resolves once every one of those
//! clients has acknowledged it at its QoS (PUBACK for QoS 1, PUBCOMP for QoS 2, written for QoS
//! 0). That acknowledgement is what lets a source route commit a Kafka offset, so a record is
//! taken off the source only after the clients have it.
//!
//! A client that matches several of its own subscriptions gets the message once, at the highest
//! QoS it was granted among them, with every subscription identifier (MQTT 5 allows either
//! this or one copy per subscription). A shared subscription (`$share/GROUP/FILTER`) gives each
//! message to one member of the group, in turn.
//!
//! Each session has a bounded queue ([`SESSION_QUEUE`] messages). A client whose queue is full
//! fails that message (retriable, "queue full") without holding up the other subscribers: a slow
//! client costs at most its own queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::codec::PublishProperties;
use crate::brokers::{Ack, BrokerError, Delivery, Destination, all_acknowledged};
use crate::message::{Header, well_known};
use crate::router::TopicFilter;

/// Messages that may wait in one session's queue for the client to take them.
pub const SESSION_QUEUE: usize = 1000;

/// What a client acknowledging (or failing to acknowledge) an [`Outbound`] reports.
pub type Done = oneshot::Sender<Result<(), BrokerError>>;

/// A message on its way to one client.
#[derive(Debug)]
pub struct Outbound {
    /// The topic it is published to.
    pub topic: String,
    /// The QoS it is sent at: the lower of what the route offers and what the client was granted.
    pub qos: u8,
    pub payload: Bytes,
    /// MQTT 5 properties, from the record's headers, and the subscription identifiers it matched.
    pub properties: PublishProperties,
    /// Told when the client has acknowledged it (or could not take it). Once its receiver is
    /// gone (the source stopped waiting, at `ttl_ms`), the message is not sent.
    pub done: Done,
}

/// One client's subscription in the table.
#[derive(Debug, Clone)]
struct Member {
    client_id: Arc<str>,
    /// Which connection of that client made it: a subscription is removed by the connection that
    /// owns it, never by an older one of the same client id.
    session: u64,
    qos: u8,
    no_local: bool,
    id: Option<usize>,
    outbox: mpsc::Sender<Box<Outbound>>,
}

/// Every member of one filter (and, for a shared subscription, one group).
#[derive(Debug)]
struct Entry {
    filter: TopicFilter,
    members: Vec<Member>,
    /// The next member of a shared subscription to get a message.
    next: AtomicUsize,
}

/// How a subscription is keyed: its group for a shared one, and its filter text.
type Key = (Option<String>, String);

/// The subscriptions of every connected MQTT client, and the `mqtt` destination.
#[derive(Debug, Default)]
pub struct Subscribers {
    table: RwLock<HashMap<Key, Entry>>,
}

/// A SUBSCRIBE filter, split into its share group and the filter proper.
pub struct Parsed {
    pub group: Option<String>,
    pub filter: TopicFilter,
}

/// Parses a SUBSCRIBE filter: `FILTER` or `$share/GROUP/FILTER`.
pub fn parse_filter(text: &str) -> Result<Parsed, String> {
    if let Some(rest) = text.strip_prefix("$share/") {
        let Some((group, filter)) = rest.split_once('/') else {
            return Err(format!("{text:?} is not $share/GROUP/FILTER"));
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(format!("share group {group:?} is empty or has a wildcard"));
        }
        return Ok(Parsed {
            group: Some(group.to_string()),
            filter: TopicFilter::parse(filter)?,
        });
    }
    Ok(Parsed {
        group: None,
        filter: TopicFilter::parse(text)?,
    })
}

/// A subscription a client asks for.
pub struct Subscription {
    pub client_id: Arc<str>,
    pub session: u64,
    pub parsed: Parsed,
    pub qos: u8,
    pub no_local: bool,
    pub id: Option<usize>,
    pub outbox: mpsc::Sender<Box<Outbound>>,
}

impl Subscribers {
    /// Adds a subscription, or replaces the client's subscription to the same filter
    /// [MQTT-3.8.4-3].
    pub fn subscribe(&self, s: Subscription) {
        let key = (s.parsed.group.clone(), s.parsed.filter.to_string());
        let member = Member {
            client_id: s.client_id,
            session: s.session,
            qos: s.qos,
            no_local: s.no_local,
            id: s.id,
            outbox: s.outbox,
        };
        let Ok(mut table) = self.table.write() else {
            return;
        };
        let entry = table.entry(key).or_insert_with(|| Entry {
            filter: s.parsed.filter,
            members: Vec::new(),
            next: AtomicUsize::new(0),
        });
        entry.members.retain(|m| m.client_id != member.client_id);
        entry.members.push(member);
    }

    /// Removes the client's subscription to `filter` (as written in the SUBSCRIBE); whether it
    /// had one.
    pub fn unsubscribe(&self, client_id: &str, filter: &str) -> bool {
        let Ok(parsed) = parse_filter(filter) else {
            return false;
        };
        let key = (parsed.group, parsed.filter.to_string());
        let Ok(mut table) = self.table.write() else {
            return false;
        };
        let Some(entry) = table.get_mut(&key) else {
            return false;
        };
        let before = entry.members.len();
        entry.members.retain(|m| &*m.client_id != client_id);
        let found = entry.members.len() < before;
        if entry.members.is_empty() {
            table.remove(&key);
        }
        found
    }

    /// Removes every subscription connection `session` of `client_id` made, when its session
    /// ends.
    pub fn remove_session(&self, client_id: &str, session: u64) {
        let Ok(mut table) = self.table.write() else {
            return;
        };
        table.retain(|_, entry| {
            entry
                .members
                .retain(|m| !(&*m.client_id == client_id && m.session == session));
            !entry.members.is_empty()
        });
    }

    /// How many subscriptions there are (a member of a shared subscription counts once).
    pub fn len(&self) -> usize {
        self.table
            .read()
            .map_or(0, |t| t.values().map(|e| e.members.len()).sum())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages waiting in the queues of the sessions that have subscriptions, each queue counted
    /// once.
    pub fn queued(&self) -> usize {
        let Ok(table) = self.table.read() else {
            return 0;
        };
        let mut seen = std::collections::HashSet::new();
        table
            .values()
            .flat_map(|e| e.members.iter())
            .filter(|m| seen.insert((m.client_id.clone(), m.session)))
            .map(|m| m.outbox.max_capacity() - m.outbox.capacity())
            .sum()
    }

    /// The clients a message to `topic` goes to, each once, with the QoS it goes at and the
    /// subscription identifiers it matched. `publisher` is the client id that published it, for
    /// No Local.
    fn targets(&self, topic: &str, offered: u8, publisher: Option<&str>) -> Vec<Target> {
        let Ok(table) = self.table.read() else {
            return Vec::new();
        };
        let mut targets: Vec<Target> = Vec::new();
        let add = |m: &Member, targets: &mut Vec<Target>| {
            let qos = offered.min(m.qos);
            match targets.iter_mut().find(|t| t.client_id == m.client_id) {
                Some(t) => {
                    t.qos = t.qos.max(qos);
                    t.ids.extend(m.id);
                }
                None => targets.push(Target {
                    client_id: m.client_id.clone(),
                    qos,
                    ids: m.id.into_iter().collect(),
                    outbox: m.outbox.clone(),
                }),
            }
        };
        for ((group, _), entry) in table.iter() {
            if !entry.filter.matches(topic) {
                continue;
            }
            let eligible = |m: &&Member| !(m.no_local && publisher == Some(&*m.client_id));
            if group.is_none() {
                for m in entry.members.iter().filter(eligible) {
                    add(m, &mut targets);
                }
            } else {
                // One member of the group, in turn; a member whose queue is full is passed over
                // while another has room.
                let members: Vec<&Member> = entry.members.iter().filter(eligible).collect();
                if members.is_empty() {
                    continue;
                }
                let start = entry.next.fetch_add(1, Ordering::Relaxed);
                let pick = (0..members.len())
                    .map(|i| members[(start + i) % members.len()])
                    .find(|m| m.outbox.capacity() > 0)
                    .unwrap_or(members[start % members.len()]);
                add(pick, &mut targets);
            }
        }
        targets
    }
}

/// One client a message goes to.
struct Target {
    client_id: Arc<str>,
    qos: u8,
    ids: Vec<usize>,
    outbox: mpsc::Sender<Box<Outbound>>,
}

impl Destination for Subscribers {
    fn enqueue(&self, delivery: Delivery) -> BoxFuture<'_, Result<Ack, BrokerError>> {
        // Queueing never waits: a full queue fails that client's copy at once.
        let result = self.deliver(delivery);
        futures::future::ready(result).boxed()
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

impl Subscribers {
    fn deliver(&self, delivery: Delivery) -> Result<Ack, BrokerError> {
        let publisher = delivery
            .headers
            .iter()
            .find(|h| h.name == "mqtt.client-id")
            .and_then(|h| std::str::from_utf8(&h.value).ok());
        let targets = self.targets(&delivery.address, delivery.source.qos, publisher);
        if targets.is_empty() {
            return Err(BrokerError::NoReceiver(format!(
                "no client is subscribed to {:?}",
                delivery.address
            )));
        }
        let properties = properties(&delivery.headers);
        let mut waits = Vec::with_capacity(targets.len());
        for target in targets {
            let (done, wait) = oneshot::channel();
            let mut properties = properties.clone();
            properties.subscription_ids = target.ids;
            let outbound = Outbound {
                topic: delivery.address.clone(),
                qos: target.qos,
                payload: delivery.payload.clone(),
                properties,
                done,
            };
            let client = target.client_id;
            match target.outbox.try_send(Box::new(outbound)) {
                Ok(()) => waits.push(
                    async move {
                        wait.await.unwrap_or_else(|_| {
                            Err(BrokerError::Retriable(format!(
                                "client {client:?} went away before acknowledging"
                            )))
                        })
                    }
                    .boxed(),
                ),
                Err(mpsc::error::TrySendError::Full(_)) => waits.push(
                    futures::future::ready(Err(BrokerError::Retriable(format!(
                        "the queue of client {client:?} is full ({SESSION_QUEUE} messages)"
                    ))))
                    .boxed(),
                ),
                Err(mpsc::error::TrySendError::Closed(_)) => waits.push(
                    futures::future::ready(Err(BrokerError::Retriable(format!(
                        "client {client:?} went away"
                    ))))
                    .boxed(),
                ),
            }
        }
        Ok(all_acknowledged(waits))
    }
}

/// MQTT 5 properties from a record's headers: the well-known names become the properties they
/// came from, every other header with a UTF-8 value a user property.
pub fn properties(headers: &[Header]) -> PublishProperties {
    let mut p = PublishProperties::default();
    for h in headers {
        let text = std::str::from_utf8(&h.value).ok();
        match h.name.as_str() {
            well_known::CONTENT_TYPE => p.content_type = text.map(str::to_string),
            well_known::RESPONSE_TOPIC => p.response_topic = text.map(str::to_string),
            well_known::CORRELATION_DATA => p.correlation_data = Some(h.value.clone()),
            well_known::MESSAGE_EXPIRY_INTERVAL => {
                p.message_expiry_interval = text.and_then(|t| t.parse().ok());
            }
            well_known::PAYLOAD_FORMAT_INDICATOR => {
                p.payload_format_indicator = text.and_then(|t| t.parse().ok());
            }
            name => {
                if let Some(value) = text {
                    p.user_properties
                        .push((name.to_string(), value.to_string()));
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Protocol, Source};

    fn delivery(topic: &str, qos: u8) -> Delivery {
        Delivery {
            address: topic.into(),
            key: None,
            headers: vec![Header::new(
                "correlation-data",
                Bytes::from_static(b"\x01\x02"),
            )]
            .into(),
            payload: Bytes::from_static(b"on"),
            source: Arc::new(Source {
                protocol: Protocol::Kafka,
                client_id: Arc::from(""),
                topic: "commands".into(),
                qos,
                identity: None,
            }),
        }
    }

    fn subscribe(
        subs: &Subscribers,
        client: &str,
        filter: &str,
        qos: u8,
    ) -> mpsc::Receiver<Box<Outbound>> {
        let (tx, rx) = mpsc::channel(2);
        subs.subscribe(Subscription {
            client_id: Arc::from(client),
            session: 1,
            parsed: parse_filter(filter).unwrap(),
            qos,
            no_local: false,
            id: None,
            outbox: tx,
        });
        rx
    }

    #[tokio::test]
    async fn acknowledged_once_every_matching_client_has_it() {
        let subs = Subscribers::default();
        let mut a = subscribe(&subs, "a", "command/+/req", 2);
        let mut b = subscribe(&subs, "b", "command/#", 0);
        let _c = subscribe(&subs, "c", "other/#", 1);
        let ack = subs.deliver(delivery("command/dev1/req", 1)).unwrap();
        let to_a = a.recv().await.unwrap();
        let to_b = b.recv().await.unwrap();
        assert_eq!(
            (to_a.qos, to_b.qos),
            (1, 0),
            "the lower of offered and granted"
        );
        assert_eq!(
            to_a.properties.correlation_data.as_deref(),
            Some(&b"\x01\x02"[..])
        );
        to_a.done.send(Ok(())).unwrap();
        let mut ack = ack;
        assert!(
            (&mut ack).now_or_never().is_none(),
            "b has not acknowledged"
        );
        to_b.done.send(Ok(())).unwrap();
        assert_eq!(ack.await, Ok(()));
    }

    #[tokio::test]
    async fn nobody_subscribed_and_full_queues_are_reported() {
        let subs = Subscribers::default();
        assert!(matches!(
            subs.deliver(delivery("command/dev1/req", 1)),
            Err(BrokerError::NoReceiver(_))
        ));
        let _a = subscribe(&subs, "a", "#", 1);
        let mut acks = Vec::new();
        for _ in 0..3 {
            acks.push(subs.deliver(delivery("t", 1)).unwrap());
        }
        // The queue holds 2: the third fails at once, retriable.
        let third = acks.pop().unwrap().await;
        assert!(matches!(third, Err(BrokerError::Retriable(e)) if e.contains("full")));
    }

    #[tokio::test]
    async fn a_shared_subscription_takes_turns() {
        let subs = Subscribers::default();
        let mut a = subscribe(&subs, "a", "$share/g/jobs/#", 1);
        let mut b = subscribe(&subs, "b", "$share/g/jobs/#", 1);
        for _ in 0..4 {
            drop(subs.deliver(delivery("jobs/1", 1)).unwrap());
        }
        let (mut na, mut nb) = (0, 0);
        while a.try_recv().is_ok() {
            na += 1;
        }
        while b.try_recv().is_ok() {
            nb += 1;
        }
        assert_eq!((na, nb), (2, 2));
        assert!(subs.unsubscribe("a", "$share/g/jobs/#"));
        assert!(!subs.unsubscribe("a", "$share/g/jobs/#"));
        subs.remove_session("b", 1);
        assert!(subs.is_empty());
    }
}
