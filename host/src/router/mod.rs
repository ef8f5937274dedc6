//! Routing: which route a message takes (first match in file order) and where its outputs go.
//!
//! Everything here is plain data compiled from routes.yaml; the plugins and destinations the names
//! refer to live in the `pipeline::Snapshot` built next to it.

mod filter;
mod index;
mod template;

pub use filter::TopicFilter;
pub use template::Template;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::message::Protocol;

/// Where an output goes: a destination by name and an address template (a Kafka topic, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name of an entry under `destinations:`.
    pub destination: String,
    /// The address at that destination, filled from the message's topic.
    pub address: Template,
}

impl Target {
    /// Parses `destination:address`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some((destination, address)) = text.split_once(':') else {
            return Err(format!(
                "{text:?} is not `destination:address`, as in \"kafka:telemetry.{{2}}\""
            ));
        };
        if destination.is_empty() {
            return Err(format!("{text:?} names no destination before `:`"));
        }
        Ok(Target {
            destination: destination.to_string(),
            address: Template::parse(address)?,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.destination, self.address)
    }
}

/// What happens to a message when a plugin traps, times out or returns an error (`on_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Refuse the message; the client is told where its protocol can say so.
    Reject,
    /// Skip the failing plugin: the message goes on as it was before that plugin.
    Pass,
    /// Send the message, as it arrived, to this target instead.
    DeadLetter(Target),
}

/// What happens to a message no route matches (`unmatched`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnmatchedPolicy {
    /// Refuse it.
    Reject,
    /// Acknowledge and discard it.
    Drop,
    /// Send it to this target.
    DeadLetter(Target),
}

impl fmt::Display for ErrorPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorPolicy::Reject => f.write_str("reject"),
            ErrorPolicy::Pass => f.write_str("pass"),
            ErrorPolicy::DeadLetter(t) => write!(f, "dead-letter:{t}"),
        }
    }
}

impl fmt::Display for UnmatchedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnmatchedPolicy::Reject => f.write_str("reject"),
            UnmatchedPolicy::Drop => f.write_str("drop"),
            UnmatchedPolicy::DeadLetter(t) => write!(f, "dead-letter:{t}"),
        }
    }
}

/// One route from routes.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name, for logs and metrics.
    pub name: String,
    /// The protocol it takes messages from.
    pub protocol: Protocol,
    /// The topics it takes.
    pub filter: TopicFilter,
    /// Plugin names, run in order.
    pub plugins: Vec<String>,
    /// The default output.
    pub to: Target,
    /// Named outputs a plugin may pick.
    pub outputs: BTreeMap<String, Target>,
    /// The plugin failure policy.
    pub on_error: ErrorPolicy,
    /// For a route that reads from a broker (`from: "DESTINATION:ADDRESS"`): what it reads and
    /// what becomes of a record nobody took. `None` for a route that takes clients' messages.
    pub source: Option<RouteSource>,
    /// `shadow:`: the chain with some plugins replaced by other versions, run beside the serving
    /// chain on every message; its results are compared and never leave the proxy.
    pub shadow: Option<Vec<String>>,
    /// `canary:`: a share of the messages takes the chain with some plugins replaced.
    pub canary: Option<Canary>,
}

/// A route's canary: which messages take the other chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// The route's chain with the canary's replacements.
    pub plugins: Vec<String>,
    /// The share of messages, 0 to 100, that take it: the same devices (by key, else client id)
    /// every time.
    pub percent: f64,
}

impl Canary {
    /// Whether a message with this stickiness key (its Kafka key, else its client id) takes the
    /// canary. FNV-1a, not the standard hasher: a device must stay on its side across restarts
    /// and releases.
    pub fn takes(&self, stickiness: &[u8]) -> bool {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stickiness {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Buckets of 0.01 %.
        ((hash % 10_000) as f64) < self.percent * 100.0
    }
}

/// What a source route reads (`from: "kafka:commands"`) and how it delivers to the proxy's
/// clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSource {
    /// The destination it reads from (a Kafka cluster under `destinations:`).
    pub destination: String,
    /// The topic (or queue) read.
    pub address: String,
    /// The QoS offered to subscribers; each gets the lower of it and its grant.
    pub qos: u8,
    /// How long a record may take to be acknowledged by every subscriber it matched; after that
    /// it counts as undelivered.
    pub ttl: Duration,
    /// Where a record goes that no subscriber took, with why; `None` to drop it (`drop`).
    pub undelivered: Option<Target>,
}

/// The routes in file order, with an index of the client routes' filters per protocol.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Client routes taking MQTT messages, by filter.
    mqtt: index::FilterIndex,
    /// Client routes taking AMQP messages, by filter.
    amqp: index::FilterIndex,
    /// Positions by name (the first route of a name), for the readers of source routes, which
    /// look their route up for every record.
    by_name: HashMap<String, usize>,
}

impl RouteTable {
    /// A table trying `routes` in this order.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut mqtt = index::FilterIndex::default();
        let mut amqp = index::FilterIndex::default();
        let mut by_name = HashMap::with_capacity(routes.len());
        for (position, route) in routes.iter().enumerate() {
            by_name.entry(route.name.clone()).or_insert(position);
            // Source routes read from brokers and never take a client's message.
            if route.source.is_some() {
                continue;
            }
            match route.protocol {
                Protocol::Mqtt => mqtt.insert(&route.filter, position),
                Protocol::Amqp => amqp.insert(&route.filter, position),
                Protocol::Kafka => {}
            }
        }
        RouteTable {
            routes,
            mqtt,
            amqp,
            by_name,
        }
    }

    /// The first client route, in file order, whose protocol and filter match. The index finds
    /// it without trying the routes before it, so the cost does not grow with their number.
    pub fn select(&self, protocol: Protocol, topic: &str) -> Option<&Route> {
        let index = match protocol {
            Protocol::Mqtt => &self.mqtt,
            Protocol::Amqp => &self.amqp,
            Protocol::Kafka => return None,
        };
        self.routes.get(index.first_match(topic)?)
    }

    /// The route called `name`.
    pub fn named(&self, name: &str) -> Option<&Route> {
        self.routes.get(*self.by_name.get(name)?)
    }

    /// Every route, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, filter: &str) -> Route {
        Route {
            name: name.into(),
            protocol: Protocol::Mqtt,
            filter: TopicFilter::parse(filter).unwrap(),
            plugins: vec![],
            to: Target::parse("kafka:t").unwrap(),
            outputs: BTreeMap::new(),
            on_error: ErrorPolicy::Reject,
            source: None,
            shadow: None,
            canary: None,
        }
    }

    #[test]
    fn a_canary_takes_its_share_and_keeps_its_devices() {
        let canary = Canary {
            plugins: vec![],
            percent: 10.0,
        };
        let taken = (0..20_000)
            .filter(|i| canary.takes(format!("device-{i}").as_bytes()))
            .count();
        assert!((1_700..2_300).contains(&taken), "{taken} of 20000");
        for i in 0..100 {
            let key = format!("device-{i}");
            assert_eq!(canary.takes(key.as_bytes()), canary.takes(key.as_bytes()));
        }
        let none = Canary {
            plugins: vec![],
            percent: 0.0,
        };
        assert!(!(0..1000).any(|i| none.takes(format!("d{i}").as_bytes())));
    }

    #[test]
    fn first_match_wins() {
        let table = RouteTable::new(vec![route("specific", "a/b"), route("any", "a/#")]);
        assert_eq!(
            table.select(Protocol::Mqtt, "a/b").unwrap().name,
            "specific"
        );
        assert_eq!(table.select(Protocol::Mqtt, "a/c").unwrap().name, "any");
        assert!(table.select(Protocol::Mqtt, "b").is_none());
        assert!(table.select(Protocol::Amqp, "a/b").is_none());
    }

    #[test]
    fn targets() {
        let t = Target::parse("kafka:telemetry.{2}").unwrap();
        assert_eq!(t.destination, "kafka");
        assert_eq!(
            t.address.render("telemetry/acme/d", None, &[]).unwrap(),
            "telemetry.acme"
        );
        assert!(Target::parse("no-colon").is_err());
        assert!(Target::parse(":topic").is_err());
    }
}
