//! SASL for the AMQP listener: ANONYMOUS (unless `anonymous: false`) and PLAIN against the users
//! of routes.yaml, whose passwords are stored as PHC hashes (argon2 by default), never as text.
//!
//! fe2o3's built-in PLAIN mechanism holds one user and does not say who logged in; this one holds
//! any number and records the authenticated identity in a slot the connection reads after the
//! handshake, so that it becomes the client id of every message on the connection.
//!
//! A source address that keeps failing is throttled ([`crate::limits::FailedLogins`]): its
//! logins are refused with `sys-temp` before any password is checked, until it earns a try back.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use crate::limits::Limits;

const ANONYMOUS: &str = "ANONYMOUS";
const PLAIN: &str = "PLAIN";

/// The outcome of one connection's SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    /// Logged in with ANONYMOUS.
    Anonymous,
    /// Logged in with PLAIN as this user.
    User(String),
    /// Tried PLAIN and failed, as this user name.
    Refused(String),
    /// Tried PLAIN from an address with too many recent failures; the password was not checked.
    Throttled(String),
}

/// One connection's SASL acceptor.
#[derive(Clone)]
pub(super) struct Sasl {
    anonymous: bool,
    users: Arc<BTreeMap<String, String>>,
    identity: Arc<Mutex<Option<Identity>>>,
    peer: IpAddr,
    limits: Arc<Limits>,
}

impl Sasl {
    pub(super) fn new(
        anonymous: bool,
        users: Arc<BTreeMap<String, String>>,
        peer: IpAddr,
        limits: Arc<Limits>,
    ) -> Self {
        Sasl {
            anonymous,
            users,
            identity: Arc::default(),
            peer,
            limits,
        }
    }

    /// Who logged in, once the handshake is over.
    pub(super) fn identity(&self) -> Option<Identity> {
        self.identity.lock().ok().and_then(|i| i.clone())
    }

    fn outcome(&self, identity: Identity) -> SaslServerFrame {
        let code = match identity {
            Identity::Refused(_) => SaslCode::Auth,
            // A transient refusal: the same credentials may work once the address earns a try.
            Identity::Throttled(_) => SaslCode::SysTemp,
            Identity::Anonymous | Identity::User(_) => SaslCode::Ok,
        };
        if let Ok(mut slot) = self.identity.lock() {
            *slot = Some(identity);
        }
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }

    /// `[authzid] NUL authcid NUL passwd` (RFC 4616).
    fn plain(&self, response: &[u8]) -> Identity {
        let mut parts = response.split(|b| *b == 0);
        let (Some(_authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Identity::Refused(String::new());
        };
        let user = String::from_utf8_lossy(user).into_owned();
        let logins = self.limits.logins();
        if !logins.allows(self.peer) {
            self.limits.metrics().login("throttled");
            return Identity::Throttled(user);
        }
        let verified = self
            .users
            .get(&user)
            .is_some_and(|hash| verify(password, hash));
        if verified {
            self.limits.metrics().login("accepted");
            Identity::User(user)
        } else {
            // An unknown user counts too: each is a guess.
            logins.failed(self.peer);
            self.limits.metrics().login("refused");
            Identity::Refused(user)
        }
    }
}

/// Checks `password` against `hash`. An argon2 verification takes 20–40 ms of CPU by design, and
/// fe2o3's SASL acceptor calls this synchronously on the connection's task. So every check runs on
/// one thread of its own at a low CPU priority ([`Verifier`]), and the connection's worker
/// waits for the answer in `block_in_place` (its other tasks move to another thread): logins use
/// at most one core, only what the data path leaves, and never hold the async workers.
fn verify(password: &[u8], hash: &str) -> bool {
    let ask = || Verifier::get().check(password, hash);
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(ask)
    } else {
        ask()
    }
}

/// The password thread's nice value: the data path's threads get about ten times its share of a
/// busy core, and a login still completes in well under a second on a loaded machine.
const PASSWORD_NICE: i32 = 10;

/// A password check handed to the verifier thread.
struct Check {
    password: Vec<u8>,
    hash: String,
    reply: std::sync::mpsc::SyncSender<bool>,
}

/// The thread that checks passwords, one at a time, at nice [`PASSWORD_NICE`].
struct Verifier {
    checks: std::sync::mpsc::SyncSender<Check>,
}

impl Verifier {
    fn get() -> &'static Verifier {
        static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
        VERIFIER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Check>(64);
            let started = std::thread::Builder::new()
                .name("barnabas-password".into())
                .spawn(move || {
                    // On Linux the nice value is per thread: this one yields to every other.
                    if let Err(error) = rustix::process::setpriority_process(None, PASSWORD_NICE) {
                        tracing::debug!(%error, "cannot lower the password thread's priority");
                    }
                    for check in rx {
                        let ok = PasswordHash::new(&check.hash).is_ok_and(|h| {
                            argon2::Argon2::default()
                                .verify_password(&check.password, &h)
                                .is_ok()
                        });
                        let _ = check.reply.send(ok);
                    }
                });
            if let Err(error) = started {
                tracing::error!(%error, "cannot start the password thread: every login fails");
            }
            Verifier { checks: tx }
        })
    }

    /// Whether `password` matches `hash`; false if the verifier is gone.
    fn check(&self, password: &[u8], hash: &str) -> bool {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let check = Check {
            password: password.to_vec(),
            hash: hash.to_string(),
            reply,
        };
        self.checks.send(check).is_ok() && answer.recv().unwrap_or(false)
    }
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        let mut m = Vec::new();
        if !self.users.is_empty() {
            m.push(Symbol::from(PLAIN));
        }
        if self.anonymous {
            m.push(Symbol::from(ANONYMOUS));
        }
        Array::from(m)
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let identity = match init.mechanism.0.as_str() {
            ANONYMOUS if self.anonymous => Identity::Anonymous,
            PLAIN if !self.users.is_empty() => {
                let response = init
                    .initial_response
                    .map(|r| r.into_vec())
                    .unwrap_or_default();
                self.plain(&response)
            }
            _ => Identity::Refused(String::new()),
        };
        self.outcome(identity)
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // Neither mechanism has a second round.
        self.outcome(Identity::Refused(String::new()))
    }
}

/// A PHC hash of `password` (argon2id, the crate's default parameters, a random salt), for the
/// `users` of an AMQP listener.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    use argon2::password_hash::rand_core::OsRng;
    let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}
