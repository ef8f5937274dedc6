//! SASL for the AMQP listener: ANONYMOUS (unless `anonymous: false`), PLAIN against the users
//! of routes.yaml, whose passwords are stored as PHC hashes (argon2 by default), never as text,
//! and EXTERNAL (RFC 4422) for a client whose TLS certificate logged it in (`auth.client_certs`).
//!
//! fe2o3's built-in PLAIN mechanism holds one user and does not say who logged in; this one holds
//! any number and records the authenticated identity in a slot the connection reads after the
//! handshake, so that it becomes the client id of every message on the connection.
//!
//! A source address that keeps failing is throttled ([`crate::limits::FailedLogins`]): its
//! logins are refused with `sys-temp` before any password is checked, until it earns a try back.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp_types::primitives::{Array, Symbol};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use crate::edge::auth::{Auth, Login};
use crate::limits::Limits;

const ANONYMOUS: &str = "ANONYMOUS";
const PLAIN: &str = "PLAIN";
const EXTERNAL: &str = "EXTERNAL";

/// The outcome of one connection's SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Identity {
    /// Logged in with ANONYMOUS.
    Anonymous,
    /// Logged in with PLAIN as this user.
    User(String),
    /// Logged in with EXTERNAL as the identity its client certificate gives.
    Certificate(String),
    /// Tried PLAIN and failed, as this user name.
    Refused(String),
    /// Tried PLAIN from an address with too many recent failures; the password was not checked.
    Throttled(String),
}

/// One connection's SASL acceptor.
#[derive(Clone)]
pub(super) struct Sasl {
    auth: Arc<Auth>,
    identity: Arc<Mutex<Option<Identity>>>,
    peer: IpAddr,
    limits: Arc<Limits>,
    /// The identity a verified client certificate gives, which EXTERNAL logs in as.
    certificate: Option<String>,
}

impl Sasl {
    /// `certificate` is the login of the client's TLS certificate, if it sent one.
    pub(super) fn new(
        auth: Arc<Auth>,
        peer: IpAddr,
        limits: Arc<Limits>,
        certificate: Option<Login>,
    ) -> Self {
        let certificate = match certificate {
            Some(Login::User(name)) => Some(name),
            _ => None,
        };
        Sasl {
            auth,
            identity: Arc::default(),
            peer,
            limits,
            certificate,
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
            Identity::Anonymous | Identity::User(_) | Identity::Certificate(_) => SaslCode::Ok,
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
        match self
            .auth
            .login(Some((&user, password)), self.peer, &self.limits)
        {
            Login::User(user) => Identity::User(user),
            Login::Throttled => Identity::Throttled(user),
            _ => Identity::Refused(user),
        }
    }
}

impl SaslAcceptor for Sasl {
    fn mechanisms(&self) -> Array<Symbol> {
        let mut m = Vec::new();
        if self.certificate.is_some() {
            m.push(Symbol::from(EXTERNAL));
        }
        if !self.auth.users.is_empty() {
            m.push(Symbol::from(PLAIN));
        }
        if self.auth.anonymous {
            m.push(Symbol::from(ANONYMOUS));
        }
        Array::from(m)
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let identity = match init.mechanism.0.as_str() {
            ANONYMOUS if self.auth.anonymous => Identity::Anonymous,
            PLAIN if !self.auth.users.is_empty() => {
                let response = init
                    .initial_response
                    .map(|r| r.into_vec())
                    .unwrap_or_default();
                self.plain(&response)
            }
            EXTERNAL => {
                // The initial response is the identity asked for: empty for the certificate's
                // own, or that same name; another name is not the certificate's to claim.
                let asked = init
                    .initial_response
                    .map(|r| String::from_utf8_lossy(&r.into_vec()).into_owned())
                    .unwrap_or_default();
                match &self.certificate {
                    Some(name) if asked.is_empty() || asked == *name => {
                        Identity::Certificate(name.clone())
                    }
                    _ => Identity::Refused(asked),
                }
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
