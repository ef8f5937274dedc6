//! Per-client MQTT session state, kept apart from the socket task that serves the connection.
//!
//! MQTT gives a client a session: state about it that the server keeps from packet to packet,
//! and that a client with a persistent session expects to find again when it reconnects. The
//! connection task (`connection.rs`) reads packets and writes answers; what it must remember
//! about the client lives in a [`SessionState`], a plain value it owns while the client is
//! connected. [`Live`] tracks which client ids are connected, so that a second connection with
//! the same id takes over from the first.
//!
//! The session ends with its connection: every session is a clean one, whatever the client
//! asked for, and CONNACK says so (Session Present 0). Keeping sessions across connections means
//! keeping this type in a store; the in-flight table holds only what a store can keep (packet
//! ids and the means to report an outcome).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::subscriptions::{Done, Outbound, SESSION_QUEUE};
use crate::brokers::BrokerError;

/// What the proxy remembers about one MQTT client.
#[derive(Debug)]
pub struct SessionState {
    /// The client id the session belongs to.
    pub client_id: Arc<str>,
    /// Which connection of the client it is (from [`Live::register`]).
    pub id: u64,
    /// QoS 2 packet ids this client was sent PUBREC for and has not released (PUBREL) yet. A
    /// PUBLISH resent with one of them is acknowledged again and not delivered a second time.
    pub qos2_received: HashSet<u16>,
    /// Its subscriptions: the filter as the client wrote it, and the QoS granted.
    pub subscriptions: BTreeMap<String, u8>,
    /// Messages for the client that have not been sent yet, in order.
    pub outbox: mpsc::Receiver<Outbound>,
    outbox_sender: mpsc::Sender<Outbound>,
    /// QoS 1 and 2 messages sent to the client and not acknowledged yet, by packet id.
    pub outbound: HashMap<u16, InFlight>,
    next_packet_id: u16,
}

/// A QoS 1 or 2 message sent to the client, waiting for its PUBACK or PUBCOMP.
#[derive(Debug)]
pub struct InFlight {
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
    /// A new, empty session for connection `id` of `client_id`.
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
        }
    }

    /// Where messages for this client are queued (handed to each of its subscriptions).
    pub fn outbox_sender(&self) -> mpsc::Sender<Outbound> {
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
pub(super) struct Live {
    next: AtomicU64,
    live: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
}

impl Live {
    /// Registers `client_id`, telling any earlier connection with it to close.
    pub(super) fn register(&self, client_id: &str) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut live) = self.live.lock()
            && let Some((_, previous)) = live.insert(client_id.to_string(), (id, tx))
        {
            let _ = previous.send(());
        }
        (id, rx)
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
            && live.get(client_id).is_some_and(|(owner, _)| *owner == id)
        {
            live.remove(client_id);
        }
    }
}
