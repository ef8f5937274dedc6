//! Per-client MQTT session state, kept apart from the socket task that serves the connection.
//!
//! MQTT gives a client a session: state about it that the server keeps from packet to packet,
//! and that a client with a persistent session expects to find again when it reconnects. The
//! connection task (`connection.rs`) reads packets and writes answers; what it must remember
//! about the client lives in a [`SessionState`], a plain value it owns while the client is
//! connected. [`Live`] tracks which client ids are connected, so that a second connection with
//! the same id takes over from the first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// What the proxy remembers about one MQTT client.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// The client id the session belongs to.
    pub client_id: Arc<str>,
    /// QoS 2 packet ids this client was sent PUBREC for and has not released (PUBREL) yet. A
    /// PUBLISH resent with one of them is acknowledged again and not delivered a second time.
    pub qos2_received: HashSet<u16>,
}

impl SessionState {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>) -> Self {
        SessionState {
            client_id,
            qos2_received: HashSet::new(),
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
