//! Per-client MQTT session state, kept apart from the socket task that serves the connection.
//!
//! MQTT gives a client a session: state about it that the server keeps from packet to packet,
//! and that a client with a persistent session expects to find again when it reconnects. The
//! connection task (`connection.rs`) reads packets and writes answers; what it must remember
//! about the client lives in a [`SessionState`], a plain value it owns while the client is
//! connected, and hands to a [`SessionStore`] when the connection ends, if the client asked for its
//! session to outlive the connection (MQTT 5 Session Expiry Interval above 0, or 3.1.1 Clean
//! Session 0). [`MemorySessions`] keeps them in this process; a durable store (sessions kept in
//! Kafka) implements the same trait. [`Live`] tracks which client ids are connected, so that a
//! second connection with the same id takes over from the first, and waits for the first to have
//! handed the session back.
//!
//! A kept session keeps its subscriptions in the subscription table, so messages for the client
//! queue (up to the session's queue bound) while it is away; a message its source stopped waiting
//! for (`ttl_ms`) is skipped when the client is back. Messages sent and not acknowledged are sent
//! again, marked duplicate, when the client resumes the session [MQTT-4.4.0-1].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::codec::OutgoingPublish;
use super::subscriptions::{Done, Outbound, SESSION_QUEUE, Subscribers};
use crate::brokers::BrokerError;

/// What the proxy remembers about one MQTT client.
#[derive(Debug)]
pub struct SessionState {
    /// The client id the session belongs to.
    pub client_id: Arc<str>,
    /// Which session of the client it is: set when the session is created and kept across the
    /// connections that resume it. Its subscriptions are removed by this id.
    pub id: u64,
    /// QoS 2 packet ids this client was sent PUBREC for and has not released (PUBREL) yet. A
    /// PUBLISH resent with one of them is acknowledged again and not delivered a second time.
    pub qos2_received: HashSet<u16>,
    /// Its subscriptions: the filter as the client wrote it, and the QoS granted.
    pub subscriptions: BTreeMap<String, u8>,
    /// Messages for the client that have not been sent yet, in order. Boxed: a channel allocates
    /// its slots 32 at a time as it is made, and an `Outbound` is a few hundred bytes, so unboxed
    /// every connection, subscribed or not, would hold about 10 KiB of empty slots.
    pub outbox: mpsc::Receiver<Box<Outbound>>,
    outbox_sender: mpsc::Sender<Box<Outbound>>,
    /// QoS 1 and 2 messages sent to the client and not acknowledged yet, by packet id.
    pub outbound: HashMap<u16, InFlight>,
    next_packet_id: u16,
    sent: u64,
}

/// A packet a resumed session sends again.
pub enum Resend {
    Publish(Box<OutgoingPublish>),
    PubRel(u16),
}

/// A QoS 1 or 2 message sent to the client, waiting for its PUBACK or PUBCOMP.
#[derive(Debug)]
pub struct InFlight {
    /// The PUBLISH as sent, to send again if the session is resumed before it is acknowledged.
    pub publish: OutgoingPublish,
    /// Counts up per message sent, so messages are sent again in the order they were first sent
    /// [MQTT-4.6.0-1] (packet ids wrap around).
    pub order: u64,
    /// Told the outcome.
    pub done: Done,
    /// QoS 2: PUBREC came and PUBREL went; PUBCOMP is due.
    pub released: bool,
}

impl InFlight {
    /// Reports the client's answer: a reason code below 0x80 is success, anything else a refusal
    /// that resending cannot change.
    pub fn finish(self, client_id: &str, code: u8) {
        let result = if code < 0x80 {
            Ok(())
        } else {
            Err(BrokerError::Permanent(format!(
                "client {client_id:?} refused it with reason code 0x{code:02x}"
            )))
        };
        let _ = self.done.send(result);
    }
}

impl SessionState {
    /// A new, empty session of `client_id`, numbered `id`.
    pub fn new(client_id: Arc<str>, id: u64) -> Self {
        let (outbox_sender, outbox) = mpsc::channel(SESSION_QUEUE);
        SessionState {
            client_id,
            id,
            qos2_received: HashSet::new(),
            subscriptions: BTreeMap::new(),
            outbox,
            outbox_sender,
            outbound: HashMap::new(),
            next_packet_id: 0,
            sent: 0,
        }
    }

    /// The next number for [`InFlight::order`].
    pub fn next_order(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// What a resumed session sends again before anything else: every PUBLISH not acknowledged
    /// (marked duplicate), and a PUBREL for every QoS 2 message the client received, in the order
    /// they were first sent.
    pub fn to_resend(&self) -> Vec<Resend> {
        let mut pending: Vec<&InFlight> = self.outbound.values().collect();
        pending.sort_by_key(|f| f.order);
        pending
            .into_iter()
            .map(|f| {
                if f.released {
                    Resend::PubRel(f.publish.pkid)
                } else {
                    Resend::Publish(Box::new(f.publish.clone()))
                }
            })
            .collect()
    }

    /// Where messages for this client are queued (handed to each of its subscriptions).
    pub fn outbox_sender(&self) -> mpsc::Sender<Box<Outbound>> {
        self.outbox_sender.clone()
    }

    /// A packet id for a message to the client that no message in flight uses. The caller keeps
    /// fewer than 65,535 in flight (the client's Receive Maximum), so one is always free.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.outbound.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }
}

/// Live connections by client id, so that a second connection with the same id takes the session
/// over and the first is closed, as MQTT requires [MQTT-3.1.4-2].
#[derive(Default)]
pub struct Live {
    next: AtomicU64,
    live: Mutex<HashMap<String, Owner>>,
}

/// The live connection of one client id.
struct Owner {
    id: u64,
    /// Tells it to close.
    takeover: oneshot::Sender<()>,
    /// Closes when it has handed its session back.
    released: Option<oneshot::Receiver<()>>,
}

/// A connection's registration: its number, the signal to close, what it drops once it has handed
/// its session back, and the wait for the connection it took over to have done the same.
pub(super) struct Registration {
    pub id: u64,
    pub takeover: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
    pub previous: Option<oneshot::Receiver<()>>,
}

impl Live {
    /// A number no session or connection has had, for a new session.
    pub(super) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `client_id`, telling any earlier connection with it to close.
    pub(super) fn register(&self, client_id: &str) -> Registration {
        let id = self.next_id();
        let (takeover_tx, takeover) = oneshot::channel();
        let (release, released) = oneshot::channel();
        let owner = Owner {
            id,
            takeover: takeover_tx,
            released: Some(released),
        };
        let mut previous = None;
        if let Ok(mut live) = self.live.lock()
            && let Some(mut old) = live.insert(client_id.to_string(), owner)
        {
            let _ = old.takeover.send(());
            previous = old.released.take();
        }
        Registration {
            id,
            takeover,
            release,
            previous,
        }
    }

    /// Whether a connection with `client_id` is live.
    pub(super) fn is_live(&self, client_id: &str) -> bool {
        self.live
            .lock()
            .is_ok_and(|live| live.contains_key(client_id))
    }

    /// Forgets `client_id` if it still belongs to connection `id`.
    pub(super) fn unregister(&self, client_id: &str, id: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.get(client_id).is_some_and(|owner| owner.id == id)
        {
            live.remove(client_id);
        }
    }
}

/// The longest a session outlives its connection, whatever the client asks: a bound on the memory
/// kept for clients that never come back. CONNACK tells an MQTT 5 client when its request was cut.
pub const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Where sessions wait between a client's connections.
pub trait SessionStore: Send + Sync {
    /// Takes the kept session of `client_id`, if one has not expired.
    fn take(&self, client_id: &str) -> Option<SessionState>;
    /// Keeps `state` for `expiry` after its connection ended.
    fn keep(&self, state: SessionState, expiry: Duration);
    /// Ends every session whose time is up: its subscriptions go, and the messages queued for it
    /// fail for their sources.
    fn expire(&self);
    /// How many sessions are kept.
    fn kept(&self) -> usize;
}

/// Sessions kept in this process's memory: lost on restart, and the sources of the messages they
/// held read those messages again after it (their offsets were not committed).
pub struct MemorySessions {
    subscribers: Arc<Subscribers>,
    kept: Mutex<HashMap<Arc<str>, (SessionState, Instant)>>,
}

impl MemorySessions {
    /// An empty store; `subscribers` is where the subscriptions of an expired session are removed.
    pub fn new(subscribers: Arc<Subscribers>) -> Self {
        MemorySessions {
            subscribers,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        self.kept.lock().map_or(0, |k| k.len())
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionStore for MemorySessions {
    fn take(&self, client_id: &str) -> Option<SessionState> {
        self.expire();
        self.kept
            .lock()
            .ok()?
            .remove(client_id)
            .map(|(state, _)| state)
    }

    fn keep(&self, state: SessionState, expiry: Duration) {
        let until = Instant::now() + expiry.min(MAX_SESSION_EXPIRY);
        if let Ok(mut kept) = self.kept.lock() {
            kept.insert(state.client_id.clone(), (state, until));
        }
    }

    fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<SessionState> = match self.kept.lock() {
            Ok(mut kept) => {
                let ids: Vec<Arc<str>> = kept
                    .iter()
                    .filter(|(_, (_, until))| *until <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter()
                    .filter_map(|id| kept.remove(id).map(|(s, _)| s))
                    .collect()
            }
            Err(_) => return,
        };
        for state in expired {
            self.subscribers.remove_session(&state.client_id, state.id);
        }
    }

    fn kept(&self) -> usize {
        self.len()
    }
}
