//! routes.yaml: read it, then compile the raw YAML image into a validated [`Config`].
//!
//! `compile` is pure (no files besides the one named, no network, no plugin loading) and reports
//! every error it finds at once, each with file, line and column. `barnabas check` and `barnabas
//! run` both start here; loading the plugins the config names is the next step, in
//! `pipeline::Snapshot::build`.

mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::brokers::amqp::{AmqpConfig, ClientTls};
use crate::brokers::kafka::{Bootstrap, KafkaConfig};
use crate::edge::auth::{AclFilter, AclRule, Auth, CertIdentity};
use crate::edge::tls::{ClientAuth, TlsConfig};
use crate::message::Protocol;
use crate::protocols::amqp::AmqpListenerConfig;
use crate::protocols::mqtt::MqttListenerConfig;
use crate::router::{
    Canary, ErrorPolicy, Route, RouteSource, RouteTable, Target, TopicFilter, UnmatchedPolicy,
};

use raw::{
    RawAdmin, RawClientTls, RawConfig, RawDestination, RawLimits, RawListener, RawPlugin, RawRoute,
    RawTls,
};

/// The plugin CPU deadline when `timeout_ms` is not set.
pub const DEFAULT_PLUGIN_TIMEOUT_MS: u64 = 10;
/// The plugin linear-memory cap when `memory_mb` is not set.
pub const DEFAULT_PLUGIN_MEMORY_MB: u64 = 16;
/// The largest AMQP message accepted when `max_message_size` is not set.
pub const DEFAULT_AMQP_MAX_MESSAGE_SIZE: u64 = 1024 * 1024;
/// Link credit per AMQP client sender when `credit` is not set.
pub const DEFAULT_AMQP_CREDIT: u32 = 64;
/// Where the admin endpoint listens when `admin:` is present without `bind`.
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9090";
/// The largest MQTT packet accepted when `max_packet_size` is not set.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
/// The per-connection in-flight cap when `receive_maximum` is not set.
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 64;
/// How many topic aliases an MQTT 5 client may use when `topic_alias_maximum` is not set.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Open client connections over all listeners when `limits.max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100_000;
/// Message bytes under way over all connections when `limits.max_inflight_bytes` is not set.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 * 1024 * 1024;
/// AMQP sessions per connection when `channel_max` is not set.
pub const DEFAULT_AMQP_CHANNEL_MAX: u16 = 16;
/// AMQP links per session when `handle_max` is not set.
pub const DEFAULT_AMQP_HANDLE_MAX: u32 = 64;
/// How long an AMQP connection may stay silent when `idle_timeout_ms` is not set.
pub const DEFAULT_AMQP_IDLE_TIMEOUT_MS: u32 = 60_000;
/// How long a new connection may take to send CONNECT when `connect_timeout_ms` is not set.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// How long Kafka may take to acknowledge a record before it counts as failed (librdkafka's
/// `message.timeout.ms`), unless the destination's `options` set it.
pub const DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS: u64 = 10_000;
/// How long a Kafka destination waits for a topic the cluster says does not exist to appear
/// (librdkafka's `topic.metadata.propagation.max.ms`) before its records fail for good, unless the
/// destination's `options` set it.
pub const DEFAULT_KAFKA_TOPIC_PROPAGATION_MS: u64 = 3_000;
/// How long an AMQP destination may take to take a record and settle it, when `timeout_ms` is not
/// set.
pub const DEFAULT_AMQP_DESTINATION_TIMEOUT_MS: u64 = 10_000;
/// How long a record read by a source route may take to reach every subscriber (`ttl_ms`).
pub const DEFAULT_SOURCE_TTL_MS: u64 = 30_000;

/// A place in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl<T> From<&Spanned<T>> for Location {
    fn from(s: &Spanned<T>) -> Self {
        Location {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The config file.
    pub file: PathBuf,
    /// Where in it.
    pub location: Location,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.location.line,
            self.location.column,
            self.message
        )
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was read but is wrong, in one or more places.
    #[error("{}", DisplayList(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every located problem (none for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }
}

struct DisplayList<'a>(&'a [Diagnostic]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A compiled listener, before it is sorted into its protocol's list.
enum Listener {
    Mqtt(MqttListenerConfig),
    Amqp(AmqpListenerConfig),
}

/// The HTTP path of an `mqtt-ws` listener without `path:`, the one MQTT clients use by default.
const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative plugin paths are resolved against its directory.
    pub path: PathBuf,
    /// Where clients connect.
    pub listeners: Listeners,
    /// Brokers messages are delivered to, by name.
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// Plugins, by name.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Routes, in the order they are tried.
    pub routes: RouteTable,
    /// What happens to a message no route takes.
    pub unmatched: UnmatchedPolicy,
    /// Who may connect, and what each identity may publish (`auth:`).
    pub auth: Auth,
    /// This proxy's name among several on one cluster (`instance:`, default the host name): it
    /// names the consumer groups of source routes, so each instance reads every record and
    /// commits only its own progress.
    pub instance: String,
    /// The text it was compiled from.
    pub source: std::sync::Arc<[u8]>,
}

/// The listeners section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listeners {
    /// The MQTT listeners (over TCP, TLS or WebSocket), in name order.
    pub mqtt: Vec<MqttListenerConfig>,
    /// The AMQP 1.0 listeners, in name order.
    pub amqp: Vec<AmqpListenerConfig>,
    /// The admin HTTP endpoint (`admin.bind`), if any.
    pub admin: Option<SocketAddr>,
    /// What all listeners share (`limits`). Changing it needs a restart, like a listener.
    pub limits: Limits,
}

/// `limits`: bounds over all listeners together.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Open client connections over all listeners.
    pub max_connections: u32,
    /// Bytes of messages (payload, topic and headers) under way over all connections: at the
    /// limit, connections stop being read until deliveries finish.
    pub max_inflight_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
        }
    }
}

/// One entry under `destinations:`.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    /// Where it is written, for errors found when it is built.
    pub location: Location,
    /// What it is.
    pub kind: DestinationKind,
}

/// The kinds of destination.
#[derive(Debug, Clone, PartialEq)]
pub enum DestinationKind {
    /// `kind: kafka`.
    Kafka(KafkaConfig),
    /// `kind: amqp`.
    Amqp(AmqpConfig),
}

/// One entry under `plugins:`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Its name.
    pub name: String,
    /// The component file, resolved against the config's directory.
    pub wasm: PathBuf,
    /// Where `wasm:` is written, for load errors.
    pub location: Location,
    /// Its `config`, as JSON text (`null` when absent).
    pub config_json: String,
    /// Where `config:` is written, for the plugin's own complaints about it (its `init` errors).
    pub config_location: Option<Location>,
    /// CPU deadline per call.
    pub timeout: Duration,
    /// Linear-memory cap per instance, in bytes.
    pub memory_bytes: usize,
}

impl Config {
    /// Reads and compiles the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Reads and compiles the config at `path` through `files`, which keeps the bytes it read.
    pub fn load_from(files: &SourceFiles, path: &Path) -> Result<Config, ConfigError> {
        let bytes = files.read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Config::parse(path, text)
    }

    /// Compiles `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        // YAML 1.2 booleans only: `no` stays the string "no" (a country code, a payload to match)
        // instead of turning into false. Errors come without snippets: diagnostics are one line.
        // The parser's budget is raised from its defaults (250,000 nodes, 1,000,000 events) so
        // that generated tables of several hundred thousand routes load; its caps on aliases,
        // depth and total text, which are what stop hostile files, stay as they are.
        let options = serde_saphyr::options! {
            strict_booleans: true,
            with_snippet: false,
            budget: serde_saphyr::budget! {
                max_nodes: 4_000_000,
                max_events: 8_000_000,
            },
        };
        let raw: RawConfig = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let location = e
                .location()
                .map(|l| Location {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or_default();
            ConfigError::Invalid(vec![Diagnostic {
                file: path.to_path_buf(),
                location,
                message: yaml_error_message(&e),
            }])
        })?;
        let mut config = Compiler {
            path,
            errors: Vec::new(),
        }
        .compile(raw)?;
        config.source = std::sync::Arc::from(text.as_bytes());
        Ok(config)
    }

    /// The files this config was read from as a [`SourceFiles`] holding its own bytes, for
    /// building its first snapshot: the plugins are read (once) as they are loaded.
    pub fn source_files(&self) -> SourceFiles {
        let files = SourceFiles::default();
        if let Ok(mut read) = files.read.lock() {
            read.push((self.path.clone(), Ok(self.source.clone())));
        }
        files
    }

    /// A diagnostic about this config's file.
    pub fn diagnostic(&self, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.path.clone(),
            location,
            message: message.into(),
        }
    }
}

/// serde-saphyr renders errors with a source snippet; the diagnostic wants the first line only,
/// without the location it already carries.
fn yaml_error_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // Drop the "line L column C: " prefix: the diagnostic carries the location already.
    let first = match (first.starts_with("line "), first.find(": ")) {
        (true, Some(i)) => &first[i + 2..],
        _ => first,
    };
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

struct Compiler<'a> {
    path: &'a Path,
    errors: Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn error(&mut self, at: Location, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            file: self.path.to_path_buf(),
            location: at,
            message: message.into(),
        });
    }

    fn compile(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        if let Some(v) = &raw.version
            && v.value != 1
        {
            self.error(
                v.into(),
                format!(
                    "unsupported version {}: this proxy reads version 1",
                    v.value
                ),
            );
        }

        let mut mqtt = Vec::new();
        let mut amqp = Vec::new();
        for (name, l) in &raw.listeners {
            match self.listener(name, l) {
                Some(Listener::Mqtt(m)) => mqtt.push(m),
                Some(Listener::Amqp(a)) => amqp.push(a),
                None => {}
            }
        }
        if raw.listeners.is_empty() {
            self.error(
                Location { line: 1, column: 1 },
                "no listener: add `listeners: { mqtt: { bind: \"127.0.0.1:1883\" } }`",
            );
        }

        let auth = self.auth(&raw);
        let admin = raw.admin.as_ref().and_then(|a| self.admin(a));
        let limits = raw
            .limits
            .as_ref()
            .map(|l| self.limits(l))
            .unwrap_or_default();

        let mut destinations = BTreeMap::new();
        for (name, d) in &raw.destinations {
            if Protocol::ALL.iter().any(|p| p.as_str() == name) {
                self.error(
                    d.into(),
                    format!(
                        "destination name {name:?} is taken: `to: \"{name}:...\"` delivers to the proxy's own {name} clients"
                    ),
                );
                continue;
            }
            if let Some(dest) = self.destination(name, d) {
                destinations.insert(name.clone(), dest);
            }
        }

        let base = self.path.parent().unwrap_or(Path::new("."));
        let mut plugins = BTreeMap::new();
        for (name, p) in &raw.plugins {
            if let Some(plugin) = self.plugin(base, name, p) {
                plugins.insert(name.clone(), plugin);
            }
        }

        let mut routes = Vec::new();
        let mut names = BTreeMap::new();
        for r in &raw.routes {
            if let Some(previous) =
                names.insert(r.value.name.value.clone(), Location::from(&r.value.name))
            {
                self.error(
                    (&r.value.name).into(),
                    format!(
                        "route name {:?} is already used at line {}",
                        r.value.name.value, previous.line
                    ),
                );
            }
            if let Some(route) = self.route(r, &raw) {
                routes.push(route);
            }
        }
        if raw.routes.is_empty() {
            self.error(
                Location { line: 1, column: 1 },
                "no routes: add at least one under `routes:`",
            );
        }

        let unmatched = match &raw.unmatched {
            None => UnmatchedPolicy::Reject,
            Some(u) => match u.value.as_str() {
                "reject" => UnmatchedPolicy::Reject,
                "drop" => UnmatchedPolicy::Drop,
                other => match self.dead_letter(u, other, &raw, "reject, drop") {
                    Some(t) => UnmatchedPolicy::DeadLetter(t),
                    None => UnmatchedPolicy::Reject,
                },
            },
        };

        if !self.errors.is_empty() {
            // In file order, as a reader goes through the file.
            self.errors
                .sort_by_key(|d| (d.location.line, d.location.column));
            return Err(ConfigError::Invalid(self.errors));
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            listeners: Listeners {
                mqtt,
                amqp,
                admin,
                limits,
            },
            destinations,
            plugins,
            auth,
            instance: match &raw.instance {
                Some(i) => i.value.clone(),
                None => default_instance(),
            },
            routes: RouteTable::new(routes),
            unmatched,
            source: std::sync::Arc::from(&[][..]),
        })
    }

    fn admin(&mut self, a: &Spanned<RawAdmin>) -> Option<SocketAddr> {
        match &a.value.bind {
            Some(bind) => self.address(bind, "127.0.0.1:9090"),
            None => DEFAULT_ADMIN_BIND.parse().ok(),
        }
    }

    fn address(&mut self, bind: &Spanned<String>, example: &str) -> Option<SocketAddr> {
        match bind.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    bind.into(),
                    format!("bind {:?} is not an address like \"{example}\"", bind.value),
                );
                None
            }
        }
    }

    fn limits(&mut self, l: &Spanned<RawLimits>) -> Limits {
        let raw = &l.value;
        if let Some(m) = &raw.max_connections
            && m.value == 0
        {
            self.error(m.into(), "max_connections must be at least 1");
        }
        if let Some(b) = &raw.max_inflight_bytes
            && !(1024..=u64::from(u32::MAX)).contains(&b.value)
        {
            self.error(
                b.into(),
                "max_inflight_bytes must be from 1024 to 4294967295",
            );
        }
        Limits {
            max_connections: raw
                .max_connections
                .as_ref()
                .map_or(DEFAULT_MAX_CONNECTIONS, |m| m.value),
            max_inflight_bytes: raw
                .max_inflight_bytes
                .as_ref()
                .map_or(DEFAULT_MAX_INFLIGHT_BYTES, |b| b.value),
        }
    }

    /// `max_connections` of a listener: at least 1, the global limit when unset.
    fn listener_connections(&mut self, m: Option<&Spanned<u32>>) -> u32 {
        match m {
            Some(m) if m.value == 0 => {
                self.error(m.into(), "max_connections must be at least 1");
                1
            }
            Some(m) => m.value,
            None => u32::MAX,
        }
    }

    /// `auth:`, or the AMQP listener's `anonymous` and `users`, the spelling before `auth:` existed,
    /// which now apply to MQTT as well (with a warning). Both at once are refused.
    fn auth(&mut self, raw: &RawConfig) -> Auth {
        // Only the listener named `amqp` had them (a named listener rejects them, see `listener`).
        let legacy = raw.listeners.get("amqp").and_then(|l| {
            let l = &l.value;
            let at = l
                .anonymous
                .as_ref()
                .map(Location::from)
                .or_else(|| l.users.values().next().map(Location::from))?;
            Some((at, &l.anonymous, &l.users))
        });
        let (at, anonymous, users, acl, client_certs) = match (&raw.auth, legacy) {
            (Some(a), Some((at, ..))) => {
                self.error(
                    at,
                    "`anonymous` and `users` of `listeners.amqp` belong in the top-level `auth:` section, which is also set: move them there",
                );
                (
                    Location::from(a),
                    &a.value.anonymous,
                    &a.value.users,
                    &a.value.acl[..],
                    a.value.client_certs.as_ref(),
                )
            }
            (Some(a), None) => (
                Location::from(a),
                &a.value.anonymous,
                &a.value.users,
                &a.value.acl[..],
                a.value.client_certs.as_ref(),
            ),
            (None, Some((at, anonymous, users))) => {
                tracing::warn!(
                    file = %self.path.display(), line = at.line,
                    "`listeners.amqp.anonymous` and `users` are deprecated: they now apply to MQTT too; move them to `auth:`"
                );
                (at, anonymous, users, &[][..], None)
            }
            (None, None) => {
                return Auth {
                    anonymous: true,
                    ..Auth::default()
                };
            }
        };
        let anonymous = anonymous.as_ref().is_none_or(|a| a.value);
        let mut hashes = BTreeMap::new();
        for (name, hash) in users {
            if name == crate::edge::auth::ANONYMOUS_IDENTITY {
                self.error(
                    hash.into(),
                    "user name \"anonymous\" is reserved: ACL rules use it for clients without credentials",
                );
                continue;
            }
            match argon2::password_hash::PasswordHash::new(&hash.value) {
                Ok(_) => {
                    hashes.insert(name.clone(), hash.value.clone());
                }
                Err(e) => self.error(
                    hash.into(),
                    format!(
                        "user {name:?}: not a password hash ({e}); make one with `barnabas hash-password`"
                    ),
                ),
            }
        }
        let client_certs = client_certs.and_then(|c| match c.value.identity.value.as_str() {
            "cn" => Some(CertIdentity::CommonName),
            "san-dns" => Some(CertIdentity::SanDns),
            "san-uri" => Some(CertIdentity::SanUri),
            other => {
                self.error(
                    (&c.value.identity).into(),
                    format!("client_certs.identity {other:?}: use cn, san-dns or san-uri"),
                );
                None
            }
        });
        if !anonymous && users.is_empty() && client_certs.is_none() {
            self.error(
                at,
                "with `anonymous: false` no client can log in: add `users` or `client_certs`",
            );
        }
        let mut rules = Vec::new();
        for r in acl {
            let mut publish = Vec::new();
            for f in &r.value.publish {
                match AclFilter::parse(&f.value) {
                    Ok(filter) => publish.push(filter),
                    Err(e) => self.error(f.into(), format!("acl: {e}")),
                }
            }
            let mut subscribe = Vec::new();
            for f in &r.value.subscribe {
                match AclFilter::parse(&f.value) {
                    Ok(filter) => subscribe.push(filter),
                    Err(e) => self.error(f.into(), format!("acl: {e}")),
                }
            }
            rules.push(AclRule {
                identity: r.value.identity.value.clone(),
                publish,
                subscribe,
            });
        }
        Auth {
            anonymous,
            users: hashes,
            client_certs,
            acl: rules,
        }
    }

    /// One entry under `listeners:`. Its protocol is `protocol:`, or its name for `mqtt` and
    /// `amqp`; keys of another protocol are refused rather than ignored.
    fn listener(&mut self, name: &str, l: &Spanned<RawListener>) -> Option<Listener> {
        let raw = &l.value;
        let protocol = match (&raw.protocol, name) {
            (Some(p), _) => match p.value.as_str() {
                "mqtt" | "amqp" | "mqtt-ws" => p.value.as_str(),
                other => {
                    self.error(
                        p.into(),
                        format!("listener {name:?}: unknown protocol {other:?}; use mqtt, amqp or mqtt-ws"),
                    );
                    return None;
                }
            },
            (None, "mqtt" | "amqp") => name,
            (None, _) => {
                self.error(
                    l.into(),
                    format!("listener {name:?}: say which protocol it speaks with `protocol: mqtt | amqp | mqtt-ws`"),
                );
                return None;
            }
        };
        let mqtt_keys: [(&str, Option<Location>); 5] = [
            (
                "max_packet_size",
                raw.max_packet_size.as_ref().map(Location::from),
            ),
            (
                "receive_maximum",
                raw.receive_maximum.as_ref().map(Location::from),
            ),
            (
                "topic_alias_maximum",
                raw.topic_alias_maximum.as_ref().map(Location::from),
            ),
            (
                "connect_timeout_ms",
                raw.connect_timeout_ms.as_ref().map(Location::from),
            ),
            (
                "server_keep_alive",
                raw.server_keep_alive.as_ref().map(Location::from),
            ),
        ];
        let amqp_keys: [(&str, Option<Location>); 7] = [
            ("anonymous", raw.anonymous.as_ref().map(Location::from)),
            ("users", raw.users.values().next().map(Location::from)),
            (
                "max_message_size",
                raw.max_message_size.as_ref().map(Location::from),
            ),
            ("credit", raw.credit.as_ref().map(Location::from)),
            ("channel_max", raw.channel_max.as_ref().map(Location::from)),
            ("handle_max", raw.handle_max.as_ref().map(Location::from)),
            (
                "idle_timeout_ms",
                raw.idle_timeout_ms.as_ref().map(Location::from),
            ),
        ];
        let foreign: &[(&str, Option<Location>)] = if protocol == "amqp" {
            &mqtt_keys
        } else {
            &amqp_keys
        };
        for (key, at) in foreign {
            if let Some(at) = at {
                self.error(
                    *at,
                    format!("listener {name:?} speaks {protocol}: `{key}` does not apply to it"),
                );
            }
        }
        if name != "amqp"
            && let Some(at) = amqp_keys[..2].iter().find_map(|(_, at)| *at)
            && protocol == "amqp"
        {
            self.error(
                at,
                format!("listener {name:?}: `anonymous` and `users` belong in the top-level `auth:` section"),
            );
        }
        match (&raw.path, protocol) {
            (Some(p), "mqtt-ws") if !p.value.starts_with('/') => {
                self.error(p.into(), format!("path {:?} must start with `/`", p.value));
            }
            (Some(p), "mqtt" | "amqp") => {
                self.error(
                    p.into(),
                    format!(
                        "listener {name:?} speaks {protocol}: `path` is for `protocol: mqtt-ws`"
                    ),
                );
            }
            _ => {}
        }
        let tls = raw.tls.as_ref().and_then(|t| self.tls(t));
        let bind = self.address(&raw.bind, "127.0.0.1:1883")?;
        let max_connections = self.listener_connections(raw.max_connections.as_ref());
        if protocol == "amqp" {
            self.amqp_listener(name, bind, tls, max_connections, raw)
                .map(Listener::Amqp)
        } else {
            let websocket = (protocol == "mqtt-ws").then(|| {
                raw.path
                    .as_ref()
                    .map_or_else(|| DEFAULT_WEBSOCKET_PATH.to_string(), |p| p.value.clone())
            });
            self.mqtt_listener(name, bind, tls, websocket, max_connections, raw)
                .map(Listener::Mqtt)
        }
    }

    /// A listener's `tls:`. The files are read when the listener starts, not here: a config is
    /// checked without touching anything but itself (`barnabas check` reads them too).
    fn tls(&mut self, t: &Spanned<RawTls>) -> Option<TlsConfig> {
        let raw = &t.value;
        let base = self.path.parent().unwrap_or(Path::new("."));
        let client_auth = match raw.client_auth.as_ref().map(|c| c.value.as_str()) {
            None if raw.client_ca.is_some() => ClientAuth::Optional,
            None | Some("none") => ClientAuth::None,
            Some("optional") => ClientAuth::Optional,
            Some("required") => ClientAuth::Required,
            Some(other) => {
                if let Some(c) = &raw.client_auth {
                    self.error(
                        c.into(),
                        format!("client_auth {other:?}: use none, optional or required"),
                    );
                }
                return None;
            }
        };
        if client_auth != ClientAuth::None && raw.client_ca.is_none() {
            if let Some(c) = &raw.client_auth {
                self.error(
                    c.into(),
                    "client certificates are verified against `client_ca`: add it",
                );
            }
            return None;
        }
        Some(TlsConfig {
            cert: base.join(&raw.cert.value),
            key: base.join(&raw.key.value),
            client_ca: raw.client_ca.as_ref().map(|c| base.join(&c.value)),
            client_auth,
            location: t.into(),
        })
    }

    fn amqp_listener(
        &mut self,
        name: &str,
        bind: SocketAddr,
        tls: Option<TlsConfig>,
        max_connections: u32,
        raw: &RawListener,
    ) -> Option<AmqpListenerConfig> {
        let max_message_size = raw
            .max_message_size
            .as_ref()
            .map_or(DEFAULT_AMQP_MAX_MESSAGE_SIZE, |s| s.value);
        if let Some(s) = &raw.max_message_size
            && s.value < 512
        {
            self.error(s.into(), "max_message_size must be at least 512 bytes");
        }
        let credit = raw.credit.as_ref().map_or(DEFAULT_AMQP_CREDIT, |s| s.value);
        if let Some(s) = &raw.credit
            && !(1..=10_000).contains(&s.value)
        {
            self.error(s.into(), "credit must be from 1 to 10000");
        }
        let channel_max = raw
            .channel_max
            .as_ref()
            .map_or(DEFAULT_AMQP_CHANNEL_MAX, |c| c.value);
        if let Some(c) = &raw.channel_max
            && c.value == 0
        {
            self.error(c.into(), "channel_max must be at least 1");
        }
        let handle_max = raw
            .handle_max
            .as_ref()
            .map_or(DEFAULT_AMQP_HANDLE_MAX, |h| h.value);
        if let Some(h) = &raw.handle_max
            && h.value == 0
        {
            self.error(h.into(), "handle_max must be at least 1");
        }
        let idle_timeout_ms = raw
            .idle_timeout_ms
            .as_ref()
            .map_or(DEFAULT_AMQP_IDLE_TIMEOUT_MS, |t| t.value);
        if let Some(t) = &raw.idle_timeout_ms
            && t.value < 1000
        {
            self.error(t.into(), "idle_timeout_ms must be at least 1000");
        }
        Some(AmqpListenerConfig {
            name: name.to_string(),
            bind,
            tls,
            max_message_size,
            credit,
            max_connections,
            channel_max,
            handle_max,
            idle_timeout: Duration::from_millis(u64::from(idle_timeout_ms)),
        })
    }

    fn mqtt_listener(
        &mut self,
        name: &str,
        bind: SocketAddr,
        tls: Option<TlsConfig>,
        websocket: Option<String>,
        max_connections: u32,
        raw: &RawListener,
    ) -> Option<MqttListenerConfig> {
        let max_packet_size = raw
            .max_packet_size
            .as_ref()
            .map_or(DEFAULT_MAX_PACKET_SIZE, |s| s.value);
        if let Some(s) = &raw.max_packet_size
            && s.value < 64
        {
            self.error(s.into(), "max_packet_size must be at least 64 bytes");
        }
        let receive_maximum = raw
            .receive_maximum
            .as_ref()
            .map_or(DEFAULT_RECEIVE_MAXIMUM, |s| s.value);
        if let Some(s) = &raw.receive_maximum
            && s.value == 0
        {
            self.error(s.into(), "receive_maximum must be at least 1");
        }
        let connect_timeout_ms = raw
            .connect_timeout_ms
            .as_ref()
            .map_or(DEFAULT_CONNECT_TIMEOUT_MS, |s| s.value);
        if let Some(k) = &raw.server_keep_alive
            && k.value == 0
        {
            self.error(k.into(), "server_keep_alive must be at least 1 second");
        }
        Some(MqttListenerConfig {
            max_connections,
            server_keep_alive: raw.server_keep_alive.as_ref().map(|k| k.value),
            name: name.to_string(),
            bind,
            tls,
            websocket,
            max_packet_size,
            receive_maximum,
            topic_alias_maximum: raw
                .topic_alias_maximum
                .as_ref()
                .map_or(DEFAULT_TOPIC_ALIAS_MAXIMUM, |s| s.value),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
        })
    }

    fn destination(
        &mut self,
        name: &str,
        d: &Spanned<RawDestination>,
    ) -> Option<DestinationConfig> {
        let raw = &d.value;
        match raw.kind.value.as_str() {
            "kafka" => {
                if let Some(u) = &raw.url {
                    self.error(
                        u.into(),
                        "`url` is for AMQP; a Kafka destination has `bootstrap`",
                    );
                }
                if let Some(t) = &raw.tls {
                    self.error(
                        t.into(),
                        "Kafka TLS is set with librdkafka's options: `security.protocol: SSL` (or SASL_SSL) and `ssl.ca.location`",
                    );
                }
                let bootstrap = match &raw.bootstrap {
                    None => {
                        self.error(d.into(), format!("destination {name:?} needs `bootstrap: embedded` or `bootstrap: \"host:9092\"`"));
                        return None;
                    }
                    Some(b) if b.value == "embedded" => Bootstrap::Embedded,
                    Some(b) if b.value.trim().is_empty() => {
                        self.error(b.into(), "bootstrap cannot be empty");
                        return None;
                    }
                    Some(b) => Bootstrap::Servers(b.value.clone()),
                };
                let mut options = BTreeMap::new();
                for (key, value) in &raw.options {
                    if key == "bootstrap.servers" {
                        self.error(
                            value.into(),
                            "set the cluster with `bootstrap`, not `options.bootstrap.servers`",
                        );
                        continue;
                    }
                    // Secrets (`sasl.password`, say) come from the environment as `${VAR}`.
                    match expand_env(&value.value.0) {
                        Ok(v) => {
                            options.insert(key.clone(), v);
                        }
                        Err(e) => self.error(value.into(), format!("option {key}: {e}")),
                    }
                }
                if let Some(t) = &raw.timeout_ms {
                    self.error(
                        t.into(),
                        "`timeout_ms` is for AMQP; a Kafka destination takes `options.message.timeout.ms`",
                    );
                }
                let allow_weaker = raw.allow_weaker_delivery.as_ref().is_some_and(|a| a.value);
                // librdkafka knows its properties: ask it now, one at a time so that each error
                // points at its own line, and a typo fails `check`, not a start.
                for (key, value) in &raw.options {
                    // Checked as expanded from the environment; a value that failed to expand
                    // already has its error.
                    let Some(expanded) = options.get(key) else {
                        continue;
                    };
                    if !allow_weaker && let Some(why) = weakens_delivery(key, expanded) {
                        self.error(
                            value.into(),
                            format!(
                                "destination {name:?}, option {key}: {why}, and a client's acknowledgement \
                                 would no longer mean that its record is committed to every in-sync replica, \
                                 once. Set `allow_weaker_delivery: true` on the destination to accept that"
                            ),
                        );
                        continue;
                    }
                    let mut client = rdkafka::ClientConfig::new();
                    client.set(key, expanded);
                    if let Err(e) = client.create_native_config() {
                        let cause = match e {
                            rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
                            other => other.to_string(),
                        };
                        self.error(
                            value.into(),
                            format!("destination {name:?}, option {key}: {cause}"),
                        );
                    }
                }
                Some(DestinationConfig {
                    location: d.into(),
                    kind: DestinationKind::Kafka(KafkaConfig {
                        bootstrap,
                        options,
                        allow_weaker_delivery: allow_weaker,
                    }),
                })
            }
            "amqp" => {
                if let Some(b) = &raw.bootstrap {
                    self.error(
                        b.into(),
                        "`bootstrap` is for Kafka; an AMQP destination has `url`",
                    );
                }
                if let Some((key, value)) = raw.options.iter().next() {
                    self.error(
                        value.into(),
                        format!("unknown option {key:?}: an AMQP destination has none"),
                    );
                }
                if let Some(a) = &raw.allow_weaker_delivery {
                    self.error(
                        a.into(),
                        "`allow_weaker_delivery` is for Kafka options; an AMQP destination always waits for the broker's outcome",
                    );
                }
                let timeout_ms = raw
                    .timeout_ms
                    .as_ref()
                    .map_or(DEFAULT_AMQP_DESTINATION_TIMEOUT_MS, |t| t.value);
                if let Some(t) = &raw.timeout_ms
                    && !(1..=600_000).contains(&t.value)
                {
                    self.error(t.into(), "timeout_ms must be between 1 and 600000");
                }
                let Some(url) = &raw.url else {
                    self.error(
                        d.into(),
                        format!("destination {name:?} needs `url: \"amqp://host:5672\"`"),
                    );
                    return None;
                };
                let expanded = match expand_env(&url.value) {
                    Ok(u) => u,
                    Err(e) => {
                        self.error(url.into(), e);
                        return None;
                    }
                };
                let secure = match url::Url::parse(&expanded) {
                    Ok(u) if u.scheme() == "amqp" && u.host_str().is_some() => false,
                    Ok(u) if u.scheme() == "amqps" && u.host_str().is_some() => true,
                    Ok(u) => {
                        self.error(url.into(), format!("url scheme {:?} or host is not supported: expected amqp://host:port or amqps://host:port", u.scheme()));
                        return None;
                    }
                    Err(e) => {
                        self.error(url.into(), format!("not a URL: {e}"));
                        return None;
                    }
                };
                let tls = match &raw.tls {
                    Some(t) if !secure => {
                        self.error(t.into(), "`tls` applies to `amqps://` URLs");
                        ClientTls::default()
                    }
                    Some(t) => self.client_tls(t),
                    None => ClientTls::default(),
                };
                Some(DestinationConfig {
                    location: d.into(),
                    kind: DestinationKind::Amqp(AmqpConfig {
                        url: expanded,
                        tls,
                        timeout: Duration::from_millis(timeout_ms),
                    }),
                })
            }
            other => {
                self.error(
                    (&raw.kind).into(),
                    format!("unknown destination kind {other:?}: expected \"kafka\" or \"amqp\""),
                );
                None
            }
        }
    }

    /// `tls:` of an AMQP destination: paths resolved against the config's directory.
    fn client_tls(&mut self, t: &Spanned<RawClientTls>) -> ClientTls {
        let raw = &t.value;
        let base = self.path.parent().unwrap_or(Path::new("."));
        let cert = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((base.join(&c.value), base.join(&k.value))),
            (Some(c), None) => {
                self.error(c.into(), "a client certificate needs its `key`");
                None
            }
            (None, Some(k)) => {
                self.error(k.into(), "a `key` needs its client certificate, `cert`");
                None
            }
            (None, None) => None,
        };
        ClientTls {
            ca: raw.ca.as_ref().map(|c| base.join(&c.value)),
            cert,
        }
    }

    fn plugin(&mut self, base: &Path, name: &str, p: &Spanned<RawPlugin>) -> Option<PluginConfig> {
        let raw = &p.value;
        let timeout_ms = raw
            .timeout_ms
            .as_ref()
            .map_or(DEFAULT_PLUGIN_TIMEOUT_MS, |s| s.value);
        if let Some(t) = &raw.timeout_ms
            && !(1..=60_000).contains(&t.value)
        {
            self.error(t.into(), "timeout_ms must be between 1 and 60000");
        }
        let memory_mb = raw
            .memory_mb
            .as_ref()
            .map_or(DEFAULT_PLUGIN_MEMORY_MB, |s| s.value);
        if let Some(m) = &raw.memory_mb
            && !(1..=4096).contains(&m.value)
        {
            self.error(m.into(), "memory_mb must be between 1 and 4096");
        }
        let config_json = match &raw.config {
            None => "null".to_string(),
            Some(v) => v.value.to_string(),
        };
        Some(PluginConfig {
            name: name.to_string(),
            wasm: base.join(&raw.wasm.value),
            location: (&raw.wasm).into(),
            config_json,
            config_location: raw.config.as_ref().map(Location::from),
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: usize::try_from(memory_mb * 1024 * 1024).unwrap_or(usize::MAX),
        })
    }

    fn route(&mut self, r: &Spanned<RawRoute>, raw: &RawConfig) -> Option<Route> {
        let route = &r.value;
        let name = route.name.value.clone();
        let from = self.from(&route.from, raw);
        // A `from` naming a destination reads from it; a client protocol's never does.
        let reads_broker = route
            .from
            .value
            .split_once(':')
            .is_some_and(|(d, _)| raw.destinations.contains_key(d));
        let source = match &from {
            Some((_, filter)) if reads_broker => self.route_source(route, filter, raw),
            _ => {
                for (key, at) in [
                    ("qos", route.qos.as_ref().map(Location::from)),
                    ("ttl_ms", route.ttl_ms.as_ref().map(Location::from)),
                    (
                        "undelivered",
                        route.undelivered.as_ref().map(Location::from),
                    ),
                ] {
                    if let Some(at) = at {
                        self.error(
                            at,
                            format!("`{key}` is for a route that reads from a broker, as in `from: \"kafka:commands\"`"),
                        );
                    }
                }
                None
            }
        };

        for p in &route.plugins {
            if !raw.plugins.contains_key(&p.value) {
                let known = list(raw.plugins.keys().map(String::as_str));
                self.error(
                    p.into(),
                    format!(
                        "route {name:?} names unknown plugin {:?} (plugins: {known})",
                        p.value
                    ),
                );
            }
        }

        let to = self.target(&route.to, raw);
        let mut outputs = BTreeMap::new();
        for (output, t) in &route.outputs {
            if let Some(target) = self.target(t, raw) {
                outputs.insert(output.clone(), target);
            }
        }

        // A fixed-depth filter tells how many levels every topic has: a template that reads
        // past them could never be filled.
        if let Some((_, filter)) = &from
            && let Some(depth) = filter.fixed_depth()
        {
            let targets = std::iter::once((&route.to, to.as_ref()))
                .chain(route.outputs.values().zip(outputs.values().map(Some)));
            for (spanned, target) in targets {
                if let Some(t) = target
                    && t.address.max_level() > depth
                {
                    self.error(
                                spanned.into(),
                                format!(
                                    "{{{}}} refers to a topic level that `{filter}` never has ({depth} levels)",
                                    t.address.max_level()
                                ),
                            );
                }
            }
        }

        let on_error = match &route.on_error {
            None => ErrorPolicy::Reject,
            Some(p) => match p.value.as_str() {
                "reject" => ErrorPolicy::Reject,
                "pass" => ErrorPolicy::Pass,
                other => {
                    ErrorPolicy::DeadLetter(self.dead_letter(p, other, raw, "reject, pass")?)
                }
            },
        };

        let plugins: Vec<String> = route.plugins.iter().map(|p| p.value.clone()).collect();
        let shadow = route.shadow.as_ref().and_then(|s| {
            let swaps: Vec<(&str, &Spanned<String>)> =
                s.value.iter().map(|(k, v)| (k.as_str(), v)).collect();
            self.variant(&name, "shadow", s.into(), &swaps, &plugins, raw)
        });
        let canary = route.canary.as_ref().and_then(|c| {
            let mut percent = None;
            let mut swaps = Vec::new();
            for (key, value) in &c.value {
                if key == "percent" {
                    match value.value.0.parse::<f64>() {
                        Ok(p) if (0.0..=100.0).contains(&p) => percent = Some(p),
                        _ => {
                            self.error(value.into(), "percent is a number from 0 to 100");
                            return None;
                        }
                    }
                } else {
                    swaps.push((key.as_str(), value));
                }
            }
            let Some(percent) = percent else {
                self.error(
                    c.into(),
                    "a canary needs `percent`, as in `{ threshold: threshold-v2, percent: 10 }`",
                );
                return None;
            };
            let swaps: Vec<(&str, Spanned<String>)> = swaps
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Spanned {
                            value: v.value.0.clone(),
                            referenced: v.referenced,
                            defined: v.defined,
                        },
                    )
                })
                .collect();
            let swaps: Vec<(&str, &Spanned<String>)> = swaps.iter().map(|(k, v)| (*k, v)).collect();
            let plugins = self.variant(&name, "canary", c.into(), &swaps, &plugins, raw)?;
            Some(Canary { plugins, percent })
        });

        let (protocol, filter) = from?;
        Some(Route {
            name,
            protocol,
            filter,
            plugins,
            to: to?,
            outputs,
            on_error,
            source,
            shadow,
            canary,
        })
    }

    /// The chain of a shadow or canary: `plugins` with each `PLUGIN: OTHER` of `swaps` applied.
    /// Each PLUGIN must be in the chain, each OTHER a defined plugin.
    fn variant(
        &mut self,
        route: &str,
        what: &str,
        at: Location,
        swaps: &[(&str, &Spanned<String>)],
        plugins: &[String],
        raw: &RawConfig,
    ) -> Option<Vec<String>> {
        if swaps.is_empty() {
            self.error(
                at,
                format!("`{what}` replaces no plugin; write `{{ PLUGIN: OTHER_PLUGIN }}`"),
            );
            return None;
        }
        let mut chain = plugins.to_vec();
        let mut ok = true;
        for (from, to) in swaps {
            if !plugins.iter().any(|p| p == from) {
                self.error(
                    Location::from(*to),
                    format!(
                        "`{what}` of route {route:?} replaces {from:?}, which the route does not run (its plugins: {})",
                        list(plugins.iter().map(String::as_str))
                    ),
                );
                ok = false;
                continue;
            }
            if !raw.plugins.contains_key(&to.value) {
                self.error(
                    Location::from(*to),
                    format!(
                        "`{what}` of route {route:?} names unknown plugin {:?} (plugins: {})",
                        to.value,
                        list(raw.plugins.keys().map(String::as_str))
                    ),
                );
                ok = false;
                continue;
            }
            for p in chain.iter_mut().filter(|p| p == from) {
                *p = to.value.clone();
            }
        }
        ok.then_some(chain)
    }

    /// The source half of a route reading from a broker: what it offers subscribers, and where a
    /// record goes that none of them took.
    fn route_source(
        &mut self,
        route: &RawRoute,
        address: &TopicFilter,
        raw: &RawConfig,
    ) -> Option<RouteSource> {
        let destination = route
            .from
            .value
            .split_once(':')
            .map(|(d, _)| d.to_string())?;
        let qos = match &route.qos {
            None => 1,
            Some(q) if q.value <= 2 => q.value,
            Some(q) => {
                self.error(q.into(), "qos is 0, 1 or 2");
                return None;
            }
        };
        let ttl_ms = route
            .ttl_ms
            .as_ref()
            .map_or(DEFAULT_SOURCE_TTL_MS, |t| t.value);
        if let Some(t) = &route.ttl_ms
            && !(1..=86_400_000).contains(&t.value)
        {
            self.error(t.into(), "ttl_ms must be from 1 to 86400000 (a day)");
        }
        let undelivered = match &route.undelivered {
            None => None,
            Some(u) if u.value == "drop" => None,
            Some(u) => Some(self.target(u, raw)?),
        };
        Some(RouteSource {
            destination,
            address: address.to_string(),
            qos,
            ttl: Duration::from_millis(ttl_ms),
            undelivered,
        })
    }

    fn from(
        &mut self,
        from: &Spanned<String>,
        _raw: &RawConfig,
    ) -> Option<(Protocol, TopicFilter)> {
        let Some((protocol, filter)) = from.value.split_once(':') else {
            self.error(
                from.into(),
                format!(
                    "`from: {:?}` needs a protocol, as in \"mqtt:telemetry/#\"",
                    from.value
                ),
            );
            return None;
        };
        let Some(protocol) = Protocol::ALL.into_iter().find(|p| p.as_str() == protocol) else {
            // `DESTINATION:ADDRESS`: a route that reads from a broker.
            if let Some(d) = _raw.destinations.get(protocol) {
                let kind = match d.value.kind.value.as_str() {
                    "kafka" => Protocol::Kafka,
                    "amqp" => Protocol::Amqp,
                    // The destination has its own error.
                    _ => return None,
                };
                if filter.is_empty() || filter.contains(['+', '#']) {
                    self.error(
                        from.into(),
                        format!(
                            "`from: {:?}` reads one topic: name it without wildcards",
                            from.value
                        ),
                    );
                    return None;
                }
                return match TopicFilter::parse(filter) {
                    Ok(f) => Some((kind, f)),
                    Err(e) => {
                        self.error(from.into(), e);
                        None
                    }
                };
            }
            let known = list(Protocol::ALL.iter().map(|p| p.as_str()));
            let destinations = list(_raw.destinations.keys().map(String::as_str));
            self.error(
                from.into(),
                format!("unknown protocol or destination {protocol:?} (protocols: {known}; destinations: {destinations})"),
            );
            return None;
        };
        match TopicFilter::parse(filter) {
            Ok(f) => Some((protocol, f)),
            Err(e) => {
                self.error(from.into(), e);
                None
            }
        }
    }

    fn target(&mut self, t: &Spanned<String>, raw: &RawConfig) -> Option<Target> {
        match Target::parse(&t.value) {
            Ok(target) => {
                // `mqtt:TOPIC` and `amqp:ADDRESS` deliver to the proxy's own clients.
                let clients = Protocol::ALL
                    .iter()
                    .any(|p| p.as_str() == target.destination);
                if !clients && !raw.destinations.contains_key(&target.destination) {
                    let known = list(raw.destinations.keys().map(String::as_str));
                    self.error(
                        t.into(),
                        format!(
                            "unknown destination {:?} (destinations: {known})",
                            target.destination
                        ),
                    );
                    return None;
                }
                Some(target)
            }
            Err(e) => {
                self.error(t.into(), e);
                None
            }
        }
    }

    fn dead_letter(
        &mut self,
        at: &Spanned<String>,
        text: &str,
        raw: &RawConfig,
        words: &str,
    ) -> Option<Target> {
        let Some(target) = text.strip_prefix("dead-letter:") else {
            self.error(
                at.into(),
                format!("unknown policy {text:?}: expected {words} or \"dead-letter:DESTINATION:ADDRESS\""),
            );
            return None;
        };
        let spanned = Spanned {
            value: target.to_string(),
            referenced: at.referenced,
            defined: at.defined,
        };
        self.target(&spanned, raw)
    }
}

/// The host name, or `barnabas` when it cannot be read: the default `instance:`.
fn default_instance() -> String {
    rustix::system::uname()
        .nodename()
        .to_str()
        .ok()
        .filter(|n| !n.is_empty())
        .map_or_else(|| "barnabas".to_string(), str::to_string)
}

fn list<'a>(names: impl Iterator<Item = &'a str> + 'a) -> String
where
{
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none defined".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests;

/// The config and plugin files as one load or reload read them, each read once.
///
/// A reload compiles these bytes and marks the attempt with a digest of the same bytes, so an
/// edit that lands while it runs differs from what was tried and is applied by the next attempt.
/// (Digesting a second read of the files would take that edit for tried and skip it.)
#[derive(Debug, Default)]
pub struct SourceFiles {
    /// Each file in the order of its first read, with its bytes or why it could not be read.
    read: std::sync::Mutex<Vec<(PathBuf, FileRead)>>,
}

/// A file's bytes, or the kind and text of the error reading it (`io::Error` is not `Clone`).
type FileRead = Result<std::sync::Arc<[u8]>, (std::io::ErrorKind, String)>;

impl SourceFiles {
    /// The bytes of `path`: read now the first time, the same bytes after that.
    pub fn read(&self, path: &Path) -> Result<std::sync::Arc<[u8]>, std::io::Error> {
        let mut read = self
            .read
            .lock()
            .map_err(|_| std::io::Error::other("file cache poisoned"))?;
        let entry = match read.iter().position(|(p, _)| p == path) {
            Some(at) => &read[at].1,
            None => {
                let bytes = std::fs::read(path)
                    .map(std::sync::Arc::from)
                    .map_err(|e| (e.kind(), e.to_string()));
                read.push((path.to_path_buf(), bytes));
                &read[read.len() - 1].1
            }
        };
        entry
            .clone()
            .map_err(|(kind, text)| std::io::Error::new(kind, text))
    }

    /// A digest of every file read so far, its path and its bytes (a file that could not be read
    /// counts as empty).
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        if let Ok(read) = self.read.lock() {
            for (path, bytes) in read.iter() {
                hash.update(path.as_os_str().as_encoded_bytes());
                hash.update((path.as_os_str().len() as u64).to_be_bytes());
                if let Ok(bytes) = bytes {
                    hash.update(bytes);
                    hash.update((bytes.len() as u64).to_be_bytes());
                }
            }
        }
        hash.finalize().into()
    }
}

/// Whether a librdkafka producer option weakens what a client's acknowledgement means, and how.
/// librdkafka's aliases and boolean spellings are included: `acks` is `request.required.acks`, and
/// a boolean is true only as `true`, `t` or `1`.
fn weakens_delivery(key: &str, value: &str) -> Option<&'static str> {
    let value = value.trim().to_ascii_lowercase();
    let truthy = matches!(value.as_str(), "true" | "t" | "1");
    match key {
        "acks" | "request.required.acks" if value != "all" && value != "-1" => {
            Some("anything but `all` (-1) lets the leader acknowledge alone, or nobody")
        }
        "enable.idempotence" if !truthy => {
            Some("without idempotence a retried record can be written twice or out of order")
        }
        "delivery.report.only.error" if truthy => {
            Some("without success reports a delivery is never confirmed")
        }
        _ => None,
    }
}

/// Fills every `${NAME}` in `text` from the environment, so that credentials need not be written
/// in routes.yaml.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed `${`".into());
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
