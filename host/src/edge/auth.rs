//! Who a client is and what it may do, the same for MQTT and AMQP: the `auth:` section of
//! routes.yaml.
//!
//! A client logs in with a user name and password (MQTT CONNECT, AMQP SASL PLAIN) checked against
//! the argon2 hashes of `auth.users`, or connects anonymously when `auth.anonymous` allows it. The
//! name it logged in with is its identity. ACL rules then decide, per identity, which topics it may
//! publish to: the first rule whose `identity` matches decides, and once any rule exists, what no
//! rule allows is denied.
//!
//! Password checks cost tens of milliseconds of CPU by design, so they run one at a time on a
//! thread of their own at a low priority ([`Verifier`]); an unknown user is checked against a
//! stand-in hash so that it costs as long as a wrong password, and an address that keeps failing
//! is throttled before any check ([`crate::limits::FailedLogins`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::limits::Limits;

/// The `auth:` section, compiled. Part of each config snapshot: a reload changes it for new
/// logins and new messages.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    /// Whether a client may connect without credentials.
    pub anonymous: bool,
    /// User names and their password hashes (PHC strings, argon2 by default).
    pub users: BTreeMap<String, String>,
    /// `client_certs:`: a client whose TLS certificate was verified against its listener's
    /// `client_ca` logs in as this field of it, without a password.
    pub client_certs: Option<CertIdentity>,
    /// The ACL, in file order. Empty: everything is allowed.
    pub acl: Vec<AclRule>,
}

/// One ACL rule: for identities matching `identity` (`*` for all, `anonymous` for clients without
/// one), the topic filters they may publish to.
#[derive(Debug, Clone, PartialEq)]
pub struct AclRule {
    /// An identity, or `*`.
    pub identity: String,
    /// Filters a publish must match one of; `%u` stands for the identity, `%c` for the client id.
    pub publish: Vec<AclFilter>,
    /// Filters a subscription's filter must lie within one of (same placeholders).
    pub subscribe: Vec<AclFilter>,
}

/// Which field of a verified client certificate is the client's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdentity {
    /// The subject's common name (`cn`).
    CommonName,
    /// The first DNS name among the subject alternative names (`san-dns`).
    SanDns,
    /// The first URI among the subject alternative names (`san-uri`).
    SanUri,
}

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A user name and password from `auth.users`.
    Password,
    /// A client certificate verified by its TLS listener (`auth.client_certs`).
    Certificate,
}

/// The outcome of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Logged in as this identity.
    User(String),
    /// No credentials, and anonymous clients are allowed.
    Anonymous,
    /// No credentials, and anonymous clients are not allowed.
    CredentialsRequired,
    /// Unknown user or wrong password.
    Refused,
    /// Too many failures from this address lately: refused before the password was checked.
    Throttled,
}

impl Auth {
    /// Checks `credentials` (user name and password) from `peer`. Blocks for the password check:
    /// call it where blocking is allowed (see [`verify`]).
    pub fn login(
        &self,
        credentials: Option<(&str, &[u8])>,
        peer: IpAddr,
        limits: &Limits,
    ) -> Login {
        let Some((user, password)) = credentials else {
            return if self.anonymous {
                Login::Anonymous
            } else {
                Login::CredentialsRequired
            };
        };
        let logins = limits.logins();
        if !logins.allows(peer) {
            limits.metrics().login("throttled");
            return Login::Throttled;
        }
        // An unknown user is checked against a stand-in hash: the same cost as a wrong password,
        // so timing does not tell which user names exist.
        let hash = self.users.get(user).map(String::as_str);
        if verify(password, hash) && hash.is_some() {
            limits.metrics().login("accepted");
            Login::User(user.to_string())
        } else {
            logins.failed(peer);
            limits.metrics().login("refused");
            Login::Refused
        }
    }

    /// Logs in a client whose TLS handshake verified `certificate`: it becomes the identity that
    /// `client_certs` names, or `None` when certificates are not logins here (`client_certs` unset)
    /// and the client is to log in like any other. A certificate without that field is refused.
    pub fn login_certificate(
        &self,
        certificate: &crate::edge::tls::PeerCertificate,
        limits: &Limits,
    ) -> Option<Login> {
        let field = self.client_certs?;
        Some(match certificate.identity(field) {
            Some(name) if name != ANONYMOUS_IDENTITY => {
                limits.metrics().login("accepted");
                Login::User(name.to_string())
            }
            _ => {
                limits.metrics().login("refused");
                Login::Refused
            }
        })
    }

    /// Whether a client that logged in as `identity` by `method` may still be connected under
    /// this `auth:` (after a reload): its user is still listed, or certificates still log in.
    pub fn still_admits(&self, identity: &str, method: Method) -> bool {
        match method {
            Method::Password => self.users.contains_key(identity),
            Method::Certificate => self.client_certs.is_some(),
        }
    }

    /// Whether a client with `identity` and `client_id` may subscribe to `filter`: every topic the
    /// filter can match must be one a `subscribe` filter of its rule matches, so `command/a/#`
    /// lies within `command/%u/#` for `a`, and `command/#` does not.
    pub fn may_subscribe(&self, identity: Option<&str>, client_id: &str, filter: &str) -> bool {
        if self.acl.is_empty() {
            return true;
        }
        self.rule_for(identity).is_some_and(|r| {
            r.subscribe
                .iter()
                .any(|f| f.covers(filter, identity, client_id))
        })
    }

    /// The first rule naming `identity` (or `*`, or `anonymous` for `None`).
    fn rule_for(&self, identity: Option<&str>) -> Option<&AclRule> {
        self.acl.iter().find(|r| match identity {
            Some(id) => r.identity == "*" || r.identity == id,
            None => r.identity == "*" || r.identity == ANONYMOUS_IDENTITY,
        })
    }

    /// Whether a client with `identity` (`None`: anonymous) and `client_id` may publish to
    /// `topic`.
    pub fn may_publish(&self, identity: Option<&str>, client_id: &str, topic: &str) -> bool {
        if self.acl.is_empty() {
            return true;
        }
        self.rule_for(identity).is_some_and(|r| {
            r.publish
                .iter()
                .any(|f| f.covers(topic, identity, client_id))
        })
    }
}

/// The `identity` an ACL rule names to match clients that connected without credentials.
pub const ANONYMOUS_IDENTITY: &str = "anonymous";

/// An ACL topic filter: an MQTT filter whose levels may hold `%u` (the identity) and `%c` (the
/// client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    text: String,
    levels: Vec<AclLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AclLevel {
    Exact(String),
    /// Holds `%u` or `%c`, filled in per client.
    Template(String),
    One,
    Rest,
}

impl AclFilter {
    /// Parses a filter with the MQTT rules (`+` and `#` fill a whole level, `#` is last).
    pub fn parse(text: &str) -> Result<Self, String> {
        let plain = text.replace("%u", "u").replace("%c", "c");
        crate::router::TopicFilter::parse(&plain)
            .map_err(|e| e.replace(&format!("{plain:?}"), &format!("{text:?}")))?;
        let parts: Vec<&str> = text.split('/').collect();
        let levels = parts
            .iter()
            .map(|p| match *p {
                "+" => AclLevel::One,
                "#" => AclLevel::Rest,
                p if p.contains("%u") || p.contains("%c") => AclLevel::Template(p.to_string()),
                p => AclLevel::Exact(p.to_string()),
            })
            .collect();
        Ok(AclFilter {
            text: text.to_string(),
            levels,
        })
    }

    /// Whether every topic the subscription `filter` can match is one this filter matches, for a
    /// client with `identity` and `client_id`. A topic is a filter without wildcards, so this is
    /// also whether a publish to `filter` matches. A level with `%u` never matches for an
    /// anonymous client, and neither placeholder matches a value holding `/`, `+` or `#`, which
    /// would reach into other levels.
    fn covers(&self, filter: &str, identity: Option<&str>, client_id: &str) -> bool {
        let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#']);
        let mut wanted = filter.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            let Some(w) = wanted.next() else {
                // `a` lies within `a/#`, which also matches `a`.
                return matches!(level, AclLevel::Rest);
            };
            // A `$` topic is matched by no wildcard at its first level.
            let first_dollar = i == 0 && w.starts_with('$');
            match level {
                AclLevel::Rest => return !first_dollar,
                AclLevel::One => {
                    if w == "#" || first_dollar {
                        return false;
                    }
                }
                AclLevel::Exact(want) if w == want => {}
                AclLevel::Exact(_) => return false,
                AclLevel::Template(template) => {
                    if template.contains("%u") && !identity.is_some_and(safe) {
                        return false;
                    }
                    if template.contains("%c") && !safe(client_id) {
                        return false;
                    }
                    let filled = template
                        .replace("%u", identity.unwrap_or_default())
                        .replace("%c", client_id);
                    if w != filled {
                        return false;
                    }
                }
            }
        }
        wanted.next().is_none()
    }
}

impl std::fmt::Display for AclFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks `password` against the PHC `hash` (`None`, for an unknown user: against a stand-in hash,
/// which never matches what a client can know), on the password thread ([`Verifier`]). Blocks: on
/// a multi-thread runtime the calling worker hands its other tasks to another thread first
/// (`block_in_place`), so the async workers keep serving.
pub fn verify(password: &[u8], hash: Option<&str>) -> bool {
    let ask = || Verifier::get().check(password, hash);
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(ask)
    } else {
        ask()
    }
}

/// The hash an unknown user's password is checked against, made once, on the password thread.
fn stand_in_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password("barnabas stand-in password").unwrap_or_default())
}

/// The password thread's nice value: the data path's threads get about ten times its share of a
/// busy core, and a login still completes in well under a second on a loaded machine.
const PASSWORD_NICE: i32 = 10;

/// A password check handed to the password thread.
struct Check {
    password: Vec<u8>,
    /// `None`: an unknown user, checked against the stand-in hash.
    hash: Option<String>,
    reply: std::sync::mpsc::SyncSender<bool>,
}

/// The thread that checks passwords, one at a time, at nice [`PASSWORD_NICE`]: logins use at most
/// one core, and only what the data path leaves of it.
struct Verifier {
    checks: std::sync::mpsc::SyncSender<Check>,
}

impl Verifier {
    fn get() -> &'static Verifier {
        static VERIFIER: OnceLock<Verifier> = OnceLock::new();
        VERIFIER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Check>(64);
            let started = std::thread::Builder::new()
                .name("barnabas-password".into())
                .spawn(move || {
                    // On Linux the nice value is per thread: this one yields to the others.
                    if let Err(error) = rustix::process::setpriority_process(None, PASSWORD_NICE) {
                        tracing::debug!(%error, "cannot lower the password thread's priority");
                    }
                    for check in rx {
                        let hash = match &check.hash {
                            Some(h) => h.as_str(),
                            None => stand_in_hash(),
                        };
                        let ok = PasswordHash::new(hash).is_ok_and(|h| {
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

    /// Whether `password` matches `hash`; false if the password thread is gone.
    fn check(&self, password: &[u8], hash: Option<&str>) -> bool {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let check = Check {
            password: password.to_vec(),
            hash: hash.map(str::to_string),
            reply,
        };
        self.checks.send(check).is_ok() && answer.recv().unwrap_or(false)
    }
}

/// A PHC hash of `password` (argon2id, the crate's default parameters, a random salt), for
/// `auth.users`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    use argon2::password_hash::rand_core::OsRng;
    let salt = argon2::password_hash::SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_subscription_must_lie_within_a_subscribe_filter() {
        let auth = Auth {
            acl: vec![AclRule {
                identity: "*".into(),
                publish: Vec::new(),
                subscribe: ["command/%u/req/#", "status/+/%c"]
                    .iter()
                    .map(|f| AclFilter::parse(f).unwrap())
                    .collect(),
            }],
            ..Auth::default()
        };
        let may = |filter: &str| auth.may_subscribe(Some("a"), "c1", filter);
        assert!(may("command/a/req/#"));
        assert!(may("command/a/req/x/+"));
        assert!(may("command/a/req"));
        assert!(!may("command/+/req/#"));
        assert!(!may("command/#"));
        assert!(!may("#"));
        assert!(may("status/x/c1"));
        assert!(may("status/+/c1"));
        assert!(!may("status/#"));
        assert!(!may("status/+/c2"));
        // No rule allows publishing, and no filter allows an anonymous client's `%u`.
        assert!(!auth.may_publish(Some("a"), "c1", "command/a/req/1"));
        assert!(!auth.may_subscribe(None, "c1", "command//req/#"));
        assert!(Auth::default().may_subscribe(None, "c", "#"));
    }

    fn rule(identity: &str, publish: &[&str]) -> AclRule {
        AclRule {
            identity: identity.into(),
            publish: publish
                .iter()
                .map(|f| AclFilter::parse(f).unwrap())
                .collect(),
            subscribe: Vec::new(),
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_rest_is_denied() {
        let auth = Auth {
            anonymous: true,
            users: BTreeMap::new(),
            client_certs: None,
            acl: vec![
                rule("backend", &["#"]),
                rule("*", &["telemetry/%u/#", "command/%u/res/+", "devices/%c"]),
            ],
        };
        assert!(auth.may_publish(Some("a"), "c1", "telemetry/a/x"));
        assert!(auth.may_publish(Some("a"), "c1", "telemetry/a"));
        assert!(!auth.may_publish(Some("a"), "c1", "telemetry/b/x"));
        assert!(auth.may_publish(Some("a"), "c1", "command/a/res/1"));
        assert!(!auth.may_publish(Some("a"), "c1", "command/a/res/1/2"));
        assert!(auth.may_publish(Some("a"), "c1", "devices/c1"));
        assert!(!auth.may_publish(Some("a"), "c1", "devices/c2"));
        assert!(auth.may_publish(Some("backend"), "x", "anything/at/all"));
        // Anonymous clients have no identity to fill in.
        assert!(!auth.may_publish(None, "c1", "telemetry//x"));
        assert!(auth.may_publish(None, "c1", "devices/c1"));
        // An identity or client id that would reach into other levels fills in nothing.
        assert!(!auth.may_publish(Some("a/b"), "c1", "telemetry/a/b/x"));
        assert!(!auth.may_publish(Some("a"), "+", "devices/+"));
    }

    #[test]
    fn no_rules_allow_everything_and_anonymous_rules_name_anonymous() {
        let open = Auth::default();
        assert!(open.may_publish(None, "c", "any/topic"));
        let auth = Auth {
            acl: vec![rule(ANONYMOUS_IDENTITY, &["public/#"])],
            ..Auth::default()
        };
        assert!(auth.may_publish(None, "c", "public/x"));
        assert!(!auth.may_publish(Some("alice"), "c", "public/x"));
    }

    #[test]
    fn filters_follow_the_mqtt_rules() {
        assert!(AclFilter::parse("a/#/b").is_err());
        assert!(AclFilter::parse("a/b+").is_err());
        assert!(AclFilter::parse("a/%u+").is_err());
        assert!(AclFilter::parse("a/x-%u/#").is_ok());
    }
}
