//! Recording a route's messages for `barnabas replay` and `barnabas plugin test`.
//!
//! `GET /record?route=NAME&count=N` on the admin endpoint starts a recording session: each message
//! the route takes from then on is written to the response as a JSON line
//! ([`crate::authoring::jsonl`]), with `outputs=true` also what the route's plugins made of it,
//! until `count` messages or `max_bytes` bytes (or the client hangs up).
//!
//! The data path pays one atomic load per message while nobody records. While a session runs,
//! a recorded message is serialised and offered to a bounded queue without waiting: when the
//! client reads slower than the route takes messages, lines are skipped (and counted in the
//! session's last line) rather than the route slowed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::authoring::jsonl::{MessageLine, ResultLine};
use crate::message::Message;
use crate::pipeline::{Item, Stop};

/// Lines a session may have waiting for its client.
const SESSION_QUEUE: usize = 4096;

/// The most messages one session may ask for.
pub const MAX_COUNT: u64 = 1_000_000;

/// The most bytes one session may ask for, and its default.
pub const MAX_BYTES: u64 = 1 << 30;

/// The recording sessions of every snapshot (they outlive reloads).
#[derive(Default)]
pub struct Recorders {
    active: AtomicUsize,
    sessions: Mutex<Vec<Arc<Session>>>,
}

/// One client's recording, as the data path holds it. Its sender is dropped (ending the client's
/// stream) when the session is removed.
struct Session {
    id: u64,
    route: String,
    outputs: bool,
    tx: mpsc::Sender<String>,
    /// Messages still to record.
    remaining: AtomicU64,
    /// Bytes still allowed.
    bytes_left: AtomicU64,
    /// Lines skipped because the client read too slowly.
    skipped: Arc<AtomicU64>,
}

/// A recording as its client holds it.
pub struct Recording {
    id: u64,
    skipped: Arc<AtomicU64>,
}

impl Recording {
    /// Lines skipped so far because the client read too slowly.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl Recorders {
    /// Starts recording up to `count` messages (and `max_bytes` bytes of lines) of `route`.
    /// The lines arrive on the receiver, which ends when the session is done.
    pub fn start(
        &self,
        route: &str,
        count: u64,
        max_bytes: u64,
        outputs: bool,
    ) -> (Recording, mpsc::Receiver<String>) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let skipped = Arc::new(AtomicU64::new(0));
        let recording = Recording {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            skipped: skipped.clone(),
        };
        let session = Arc::new(Session {
            id: recording.id,
            route: route.to_string(),
            outputs,
            tx,
            remaining: AtomicU64::new(count.min(MAX_COUNT)),
            bytes_left: AtomicU64::new(max_bytes.min(MAX_BYTES)),
            skipped,
        });
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.push(session);
            self.active.store(sessions.len(), Ordering::Relaxed);
        }
        (recording, rx)
    }

    /// Whether any session records: the one check the data path makes per message.
    pub fn recording(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// Offers a message `route` took, and what its plugins made of it, to the sessions recording
    /// that route. Never waits.
    pub fn offer(&self, route: &str, msg: &Message, result: &Result<Vec<Item>, Stop>) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        let mut plain = None;
        let mut with_result = None;
        sessions.retain(|s| {
            if s.route != route {
                return !s.tx.is_closed();
            }
            let line: &String = if s.outputs {
                with_result.get_or_insert_with(|| {
                    let mut line = MessageLine::of(msg, route);
                    line.result = Some(ResultLine::of_chain(result));
                    serde_json::to_string(&line).unwrap_or_default()
                })
            } else {
                plain.get_or_insert_with(|| {
                    serde_json::to_string(&MessageLine::of(msg, route)).unwrap_or_default()
                })
            };
            let size = line.len() as u64 + 1;
            if s.bytes_left.load(Ordering::Relaxed) < size {
                return false;
            }
            match s.tx.try_send(line.clone()) {
                Ok(()) => {
                    s.bytes_left.fetch_sub(size, Ordering::Relaxed);
                    s.remaining.fetch_sub(1, Ordering::Relaxed) > 1
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.skipped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.active.store(sessions.len(), Ordering::Relaxed);
    }

    /// Ends `recording` (its client went away, or its time is up).
    pub fn stop(&self, recording: &Recording) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|s| s.id != recording.id);
            self.active.store(sessions.len(), Ordering::Relaxed);
        }
    }
}
