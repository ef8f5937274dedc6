//! The data path between an ingress and the egress: pick the route, run its plugins, deliver every
//! output, and say what happened.
//!
//! All of it runs against one [`Snapshot`] (routes, plugins, destinations) loaded once per message
//! from an `ArcSwap`: a message started on one version of the config finishes on it, and an
//! old version lives until its last message is done.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::join_all;

use crate::brokers::kafka::Bootstrap;
use crate::brokers::{
    Ack, AmqpDestination, BrokerError, Delivery, Destination, EmbeddedKafka, KafkaDestination,
};
use crate::config::{Config, DestinationKind, Diagnostic, SourceFiles};
use crate::edge::auth::Auth;
use crate::message::{Direction, Header, Headers, Message, Outcome, Protocol, Rejection};
use crate::metrics::{DestinationMeters, Metrics, PluginMeters, RouteMeters, UNMATCHED};
use crate::plugin::{LoadError, Plugin, PluginEngine, PluginInput, Verdict};
use crate::protocols::amqp::receivers::Receivers;
use crate::protocols::mqtt::subscriptions::Subscribers;
use crate::recorder::Recorders;
use crate::router::{ErrorPolicy, Route, RouteTable, Target, UnmatchedPolicy};
use crate::shadow::{MAX_SHADOW_RUNS, Shadow, ShadowReports};
use crate::sources::{SourceFrom, SourceSpec};

/// A plugin chain may fan one message out to at most this many outputs.
pub const MAX_OUTPUTS: usize = 64;

/// Header added to a dead-lettered message, saying why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "dead-letter-reason";

/// Why a snapshot could not be built from a config.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct BuildError(pub Vec<Diagnostic>);

/// Loads and type-checks every plugin a config names. Shared by `barnabas check` and
/// [`Snapshot::build`], so both accept and refuse the same plugins. A plugin of `previous` with the
/// same name, settings and file digest is reused as it is, not compiled again.
/// Plugin files are read through `files`, so a reload compiles exactly the bytes it digests.
pub fn load_plugins(
    config: &Config,
    engine: &PluginEngine,
    previous: Option<&Snapshot>,
    files: &SourceFiles,
) -> Result<HashMap<String, Arc<Plugin>>, BuildError> {
    let mut plugins = HashMap::new();
    let mut errors = Vec::new();
    for (name, p) in &config.plugins {
        let bytes = match files.read(&p.wasm) {
            Ok(b) => b,
            Err(e) => {
                let cause = format!("plugin {name:?}: cannot read {}: {e}", p.wasm.display());
                errors.push(config.diagnostic(p.location, cause));
                continue;
            }
        };
        let reusable = previous
            .and_then(|s| s.plugins.get(name))
            .filter(|old| old.is_build_of(p, &bytes));
        if let Some(old) = reusable {
            plugins.insert(name.clone(), old.clone());
            continue;
        }
        match Plugin::from_bytes(engine, p, &bytes) {
            Ok(plugin) => {
                plugins.insert(name.clone(), Arc::new(plugin));
            }
            Err(e) => {
                // The plugin's complaint about its settings points at them, not at its file.
                let at = match (&e, p.config_location) {
                    (LoadError::Init(_), Some(at)) => at,
                    _ => p.location,
                };
                errors.push(config.diagnostic(at, format!("plugin {name:?}: {e}")));
            }
        }
    }
    errors.sort_by_key(|d| (d.location.line, d.location.column));
    if errors.is_empty() {
        Ok(plugins)
    } else {
        Err(BuildError(errors))
    }
}

/// Where destinations built from a config find shared resources.
pub struct Resources {
    /// The plugin engine.
    pub engine: PluginEngine,
    /// The embedded Kafka, started on first use by a `bootstrap: embedded` destination.
    pub embedded_kafka: Option<EmbeddedKafka>,
    /// Where every snapshot counts what it does.
    pub metrics: Arc<Metrics>,
    /// The proxy's MQTT subscriptions: the `mqtt` destination of every snapshot.
    pub subscribers: Arc<Subscribers>,
    /// The AMQP clients' receiving links: the `amqp` destination of every snapshot.
    pub receivers: Arc<Receivers>,
    /// Recording sessions (`barnabas record`), which outlive reloads.
    pub recorders: Arc<Recorders>,
    /// The latest differences of shadow plugins, which outlive reloads.
    pub shadows: Arc<ShadowReports>,
}

/// How many messages of one route may be in its plugins at once: all the cores but one (at least
/// one), so that whatever one route's plugins do, a core is left for the rest of the proxy.
fn route_plugin_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .saturating_sub(1)
        .max(1)
}

/// One immutable version of the routing state.
pub struct Snapshot {
    /// Counts up from 1 with every applied config.
    pub generation: u64,
    routes: RouteTable,
    unmatched: UnmatchedPolicy,
    plugins: Arc<HashMap<String, Arc<Plugin>>>,
    destinations: HashMap<String, Arc<dyn Destination>>,
    /// What each destination was built from, so a reload can keep the unchanged ones.
    destination_kinds: HashMap<String, DestinationKind>,
    meters: Meters,
    /// Per route with plugins: how many of its messages may be in their plugins at once.
    route_slots: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Who may connect and publish what.
    auth: Arc<Auth>,
    /// Each Kafka destination's cluster (`bootstrap` resolved) and options, for source routes.
    kafka_clusters: HashMap<String, (String, BTreeMap<String, String>)>,
    /// `instance:`, which names source routes' consumer groups.
    instance: String,
    /// Recording sessions, offered every message of the routes they record.
    recorders: Arc<Recorders>,
    /// What routes with a `shadow:` run it with.
    shadow: Shadow,
    /// Where canary outcomes are counted.
    metrics: Arc<Metrics>,
}

/// A snapshot's handles on the metrics, taken once when it is built.
struct Meters {
    routes: HashMap<String, RouteMeters>,
    unmatched: RouteMeters,
    plugins: Arc<HashMap<String, PluginMeters>>,
    destinations: HashMap<String, DestinationMeters>,
}

impl Meters {
    fn new(metrics: &Metrics, config: &Config) -> Meters {
        Meters {
            routes: config
                .routes
                .routes()
                .iter()
                .map(|r| (r.name.clone(), metrics.route(&r.name)))
                .collect(),
            unmatched: metrics.route(UNMATCHED),
            plugins: Arc::new(
                config
                    .plugins
                    .keys()
                    .map(|name| (name.clone(), metrics.plugin(name)))
                    .collect(),
            ),
            destinations: config
                .destinations
                .keys()
                .map(String::as_str)
                .chain([Protocol::Mqtt.as_str(), Protocol::Amqp.as_str()])
                .map(|name| (name.to_string(), metrics.destination(name)))
                .collect(),
        }
    }
}

impl Snapshot {
    /// The `auth:` section this snapshot serves with.
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    /// Builds every plugin and destination `config` names. Compiling plugins blocks for tens of
    /// milliseconds each: call this off the async worker threads.
    /// Plugins and destinations of `previous` whose settings did not change are reused: a reload
    /// keeps their compiled code and their broker connections.
    pub fn build(
        config: &Config,
        generation: u64,
        resources: &mut Resources,
        previous: Option<&Snapshot>,
        files: &SourceFiles,
    ) -> Result<Snapshot, BuildError> {
        let plugins = load_plugins(config, &resources.engine, previous, files)?;
        let mut destinations: HashMap<String, Arc<dyn Destination>> = HashMap::new();
        let mut destination_kinds = HashMap::new();
        let mut kafka_clusters = HashMap::new();
        let mut errors = Vec::new();
        for (name, d) in &config.destinations {
            destination_kinds.insert(name.clone(), d.kind.clone());
            if let DestinationKind::Kafka(k) = &d.kind {
                let bootstrap = match &k.bootstrap {
                    Bootstrap::Servers(s) => Ok(s.clone()),
                    Bootstrap::Embedded => embedded_bootstrap(&mut resources.embedded_kafka),
                };
                match bootstrap {
                    Ok(b) => {
                        kafka_clusters.insert(name.clone(), (b, k.options.clone()));
                    }
                    Err(e) => errors
                        .push(config.diagnostic(d.location, format!("destination {name:?}: {e}"))),
                }
            }
            let unchanged = previous.and_then(|s| {
                (s.destination_kinds.get(name) == Some(&d.kind))
                    .then(|| s.destinations.get(name).cloned())
                    .flatten()
            });
            if let Some(dest) = unchanged {
                destinations.insert(name.clone(), dest);
                continue;
            }
            let built = match &d.kind {
                DestinationKind::Kafka(k) => {
                    let bootstrap = match &k.bootstrap {
                        Bootstrap::Servers(s) => Ok(s.clone()),
                        Bootstrap::Embedded => embedded_bootstrap(&mut resources.embedded_kafka),
                    };
                    bootstrap
                        .and_then(|b| {
                            let renewals = resources.metrics.producer_renewals(name);
                            KafkaDestination::new(name, &b, &k.options, renewals)
                        })
                        .map(|d| Arc::new(d) as Arc<dyn Destination>)
                }
                DestinationKind::Amqp(a) => Ok(Arc::new(AmqpDestination::new(name, a)) as _),
            };
            match built {
                Ok(dest) => {
                    destinations.insert(name.clone(), dest);
                }
                Err(e) => {
                    errors.push(config.diagnostic(d.location, format!("destination {name:?}: {e}")))
                }
            }
        }
        if !errors.is_empty() {
            return Err(BuildError(errors));
        }
        // The topics source routes read from the embedded cluster exist from the start.
        for route in config.routes.routes() {
            if let Some(source) = &route.source
                && let Some(DestinationKind::Kafka(k)) = destination_kinds.get(&source.destination)
                && k.bootstrap == Bootstrap::Embedded
                && let Some(embedded) = &resources.embedded_kafka
                && let Err(e) = embedded.create_topic(&source.address)
            {
                tracing::warn!(route = route.name, error = %e, "embedded Kafka topic not created");
            }
        }
        // `to: "mqtt:TOPIC"`: the proxy's own MQTT subscribers.
        destinations.insert(
            Protocol::Mqtt.as_str().to_string(),
            resources.subscribers.clone() as Arc<dyn Destination>,
        );
        // `to: "amqp:ADDRESS"`: receiving links of the proxy's AMQP clients.
        destinations.insert(
            Protocol::Amqp.as_str().to_string(),
            resources.receivers.clone() as Arc<dyn Destination>,
        );
        let plugins = Arc::new(plugins);
        let meters = Meters::new(&resources.metrics, config);
        Ok(Snapshot {
            generation,
            recorders: resources.recorders.clone(),
            shadow: Shadow {
                plugins: plugins.clone(),
                meters: meters.plugins.clone(),
                metrics: resources.metrics.clone(),
                reports: resources.shadows.clone(),
                slots: Arc::new(tokio::sync::Semaphore::new(MAX_SHADOW_RUNS)),
            },
            metrics: resources.metrics.clone(),
            kafka_clusters,
            instance: config.instance.clone(),
            auth: Arc::new(config.auth.clone()),
            routes: config.routes.clone(),
            unmatched: config.unmatched.clone(),
            plugins,
            destinations,
            destination_kinds,
            meters,
            route_slots: {
                let slots = route_plugin_slots();
                config
                    .routes
                    .routes()
                    .iter()
                    .filter(|r| !r.plugins.is_empty())
                    .map(|r| (r.name.clone(), Arc::new(tokio::sync::Semaphore::new(slots))))
                    .collect()
            },
        })
    }

    /// Runs one message through routing and plugins and hands every record it makes to its
    /// destination, in the order of the outputs. What is left is the wait for the brokers'
    /// acknowledgements: [`Pending::outcome`].
    pub async fn prepare(&self, msg: Message) -> Pending {
        let route = self.routes.select(msg.source.protocol, &msg.source.topic);
        let meters = route
            .and_then(|r| self.meters.routes.get(&r.name))
            .unwrap_or(&self.meters.unmatched);
        meters.received();
        let mut canary = None;
        let waiting = match route {
            Some(route) => {
                let (waiting, version) = self.prepare_route(route, &msg).await;
                canary = version;
                waiting
            }
            None => match &self.unmatched {
                UnmatchedPolicy::Reject => Waiting::Settled(Outcome::Rejected(
                    Rejection::Unmatched,
                    format!(
                        "no route takes {}:{}",
                        msg.source.protocol, msg.source.topic
                    ),
                )),
                UnmatchedPolicy::Drop => {
                    Waiting::Settled(Outcome::Dropped("no route takes it".into()))
                }
                UnmatchedPolicy::DeadLetter(target) => {
                    self.dead_letter(target, &msg, "no route takes it").await
                }
            },
        };
        Pending {
            id: msg.id,
            generation: self.generation,
            waiting,
            meters: meters.clone(),
            canary,
        }
    }

    /// Runs a record that source `route` (a route of this snapshot) read through its plugins and
    /// hands what they make to its destinations, as [`Snapshot::prepare`] does for a client's
    /// message.
    pub async fn prepare_on(&self, route: &Route, msg: Message) -> Pending {
        let meters = self
            .meters
            .routes
            .get(&route.name)
            .unwrap_or(&self.meters.unmatched);
        meters.received();
        let (waiting, canary) = self.prepare_route(route, &msg).await;
        Pending {
            id: msg.id,
            generation: self.generation,
            waiting,
            meters: meters.clone(),
            canary,
        }
    }

    /// What every source route of this snapshot reads, and where.
    pub fn sources(&self) -> Vec<SourceSpec> {
        self.routes
            .routes()
            .iter()
            .filter_map(|route| {
                let source = route.source.as_ref()?;
                let from = match self.destination_kinds.get(&source.destination)? {
                    DestinationKind::Kafka(_) => {
                        let (bootstrap, options) = self.kafka_clusters.get(&source.destination)?;
                        SourceFrom::Kafka {
                            bootstrap: bootstrap.clone(),
                            options: options.clone(),
                        }
                    }
                    DestinationKind::Amqp(config) => SourceFrom::Amqp(config.clone()),
                };
                Some(SourceSpec {
                    route: route.name.clone(),
                    address: source.address.clone(),
                    group: format!("barnabas.{}.{}", self.instance, route.name),
                    ttl: source.ttl,
                    from,
                })
            })
            .collect()
    }

    /// Runs one message through routing, plugins and delivery.
    pub async fn dispatch(&self, msg: Message) -> Outcome {
        self.prepare(msg).await.outcome().await
    }

    /// Runs the route's chain (or its canary's) on `msg` and hands the records to their
    /// destinations; says which version a route with a canary took.
    async fn prepare_route(&self, route: &Route, msg: &Message) -> (Waiting, Option<CanaryCount>) {
        let (chain, canary) = match &route.canary {
            None => (&route.plugins, None),
            Some(c) => {
                // Stable per device: its key when a plugin or the client chose one, else its
                // client id (a record read from a broker has no client).
                let stickiness = msg
                    .key
                    .as_deref()
                    .unwrap_or_else(|| msg.source.client_id.as_bytes());
                let (chain, version) = if c.takes(stickiness) {
                    (&c.plugins, "canary")
                } else {
                    (&route.plugins, "serving")
                };
                let count = CanaryCount {
                    metrics: self.metrics.clone(),
                    route: route.name.clone(),
                    version,
                };
                (chain, Some(count))
            }
        };
        let result = self.run_plugins(route, chain, msg).await;
        if self.recorders.recording() {
            self.recorders.offer(&route.name, msg, &result);
        }
        if let Some(shadow) = &route.shadow {
            self.shadow.start(route, shadow, msg, &result);
        }
        (self.deliver(route, msg, result).await, canary)
    }

    /// Hands what the chain made of `msg` to the route's destinations.
    async fn deliver(
        &self,
        route: &Route,
        msg: &Message,
        result: Result<Vec<Item>, Stop>,
    ) -> Waiting {
        let items = match result {
            Ok(items) => items,
            Err(Stop::Outcome(outcome)) => return Waiting::Settled(outcome),
            Err(Stop::DeadLetter(target, reason)) => {
                return self.dead_letter(&target, msg, &reason).await;
            }
        };

        // Every output's destination and address first, so that a message refused for one of
        // them hands nothing to any destination.
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            let target = match &item.output {
                None => &route.to,
                Some(name) => match route.outputs.get(name) {
                    Some(t) => t,
                    None => {
                        let reason = format!(
                            "plugin {:?} chose output {name:?}, which route {:?} does not define",
                            item.output_chosen_by.as_deref().unwrap_or_default(),
                            route.name
                        );
                        if UNDEFINED_OUTPUTS_LOGGED.allow() {
                            tracing::warn!(route = %route.name, id = msg.id, %reason, policy = %route.on_error, "undefined output");
                        }
                        match &route.on_error {
                            ErrorPolicy::Reject => {
                                return Waiting::Settled(Outcome::Rejected(
                                    Rejection::PluginFailed,
                                    reason,
                                ));
                            }
                            ErrorPolicy::Pass => &route.to,
                            ErrorPolicy::DeadLetter(t) => {
                                return self.dead_letter(t, msg, &reason).await;
                            }
                        }
                    }
                },
            };
            let delivery = Delivery {
                address: String::new(),
                key: item.key,
                headers: item.headers,
                payload: item.payload,
                source: msg.source.clone(),
            };
            match self.resolve(target, &item.topic, delivery) {
                Ok(record) => records.push(record),
                Err(outcome) => return Waiting::Settled(outcome),
            }
        }
        self.enqueue(records, false).await
    }

    /// The destination of `target` and the delivery with its address rendered from `topic`. An
    /// address that cannot be rendered rejects the message.
    fn resolve<'t>(
        &self,
        target: &'t Target,
        topic: &str,
        mut delivery: Delivery,
    ) -> Result<(&'t str, Delivery), Outcome> {
        delivery.address = target
            .address
            .render(topic, delivery.key.as_deref(), &delivery.headers)
            .map_err(|e| Outcome::Rejected(Rejection::Undeliverable, e))?;
        Ok((target.destination.as_str(), delivery))
    }

    /// Hands the records to their destinations one after another, so they reach each broker in
    /// this order, and returns the wait for all their acknowledgements, each timed.
    async fn enqueue(&self, records: Vec<(&str, Delivery)>, dead_letter: bool) -> Waiting {
        let mut acks = Vec::with_capacity(records.len());
        for (name, delivery) in records {
            // `compile` checks every destination name a route or policy uses.
            let Some(destination) = self.destinations.get(name) else {
                acks.push(
                    futures::future::ready(Err(BrokerError::Permanent(format!(
                        "destination {name:?} is not configured"
                    ))))
                    .boxed(),
                );
                continue;
            };
            let meters = self.meters.destinations.get(name).cloned();
            let started = Instant::now();
            let enqueued = destination.enqueue(delivery).await;
            acks.push(
                async move {
                    let result = match enqueued {
                        Ok(ack) => ack.await,
                        Err(e) => Err(e),
                    };
                    if let Some(m) = meters {
                        match &result {
                            Ok(()) => m.acked(started.elapsed()),
                            Err(e) => m.failed(matches!(e, BrokerError::Retriable(_))),
                        }
                    }
                    result
                }
                .boxed(),
            );
        }
        Waiting::Acks { acks, dead_letter }
    }

    async fn run_plugins(
        &self,
        route: &Route,
        chain: &[String],
        msg: &Message,
    ) -> Result<Vec<Item>, Stop> {
        // One route's plugins run on at most all but one of the async workers at a time: a route
        // whose plugins burn their whole CPU budget on every message (or hoard memory, or flood
        // outputs) cannot take every worker from the other routes. Waiting for a slot holds no
        // worker.
        let _slot = match self.route_slots.get(&route.name) {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        let chain = Chain::of(route, chain);
        run_chain(&self.plugins, Some(&self.meters.plugins), &chain, msg).await
    }

    /// Sends the message as it arrived to `target`, with the reason in a header.
    async fn dead_letter(&self, target: &Target, msg: &Message, reason: &str) -> Waiting {
        let mut headers = msg.headers.to_vec();
        headers.push(Header::new(
            DEAD_LETTER_REASON,
            Bytes::from(reason.to_string()),
        ));
        let delivery = Delivery {
            address: String::new(),
            key: msg.key.clone(),
            headers: headers.into(),
            payload: msg.payload.clone(),
            source: msg.source.clone(),
        };
        tracing::debug!(id = msg.id, %target, reason, "dead-lettering");
        match self.resolve(target, &msg.source.topic, delivery) {
            Ok(record) => self.enqueue(vec![record], true).await,
            Err(outcome) => Waiting::Settled(outcome),
        }
    }

    /// The latest differences of each route's shadow from its serving chain, by route.
    pub fn shadow_samples(&self) -> serde_json::Value {
        self.shadow.reports.samples()
    }

    /// The recording sessions.
    pub fn recorders(&self) -> &Arc<Recorders> {
        &self.recorders
    }

    /// The routes of this snapshot.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The plugin called `name`.
    pub fn plugin(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// The destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&Arc<dyn Destination>> {
        self.destinations.get(name)
    }

    /// The brokers under `destinations:`, by name; not `mqtt` and `amqp`, the proxy's own clients.
    pub fn destinations(&self) -> BTreeMap<&str, &Arc<dyn Destination>> {
        self.destinations
            .iter()
            .filter(|(name, _)| self.destination_kinds.contains_key(*name))
            .map(|(k, v)| (k.as_str(), v))
            .collect()
    }

    /// What destination `name` was built from.
    pub fn destination_kind(&self, name: &str) -> Option<&DestinationKind> {
        self.destination_kinds.get(name)
    }

    /// What happens to a message no route takes.
    pub fn unmatched(&self) -> &UnmatchedPolicy {
        &self.unmatched
    }

    /// The loaded plugins, by name.
    pub fn plugins(&self) -> BTreeMap<&str, &Plugin> {
        self.plugins
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect()
    }
}

/// One message on its way through the plugin chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The named output a plugin chose, or `None` for the route's `to`.
    pub output: Option<String>,
    /// The plugin that chose `output`, for the error when the route has no such output.
    pub output_chosen_by: Option<String>,
    /// The topic.
    pub topic: String,
    /// The headers.
    pub headers: Headers,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

/// Why the plugin chain stopped early.
#[derive(Debug, Clone)]
pub enum Stop {
    /// The message is settled without a broker: dropped, or rejected by a plugin or by the
    /// route's `on_error: reject`.
    Outcome(Outcome),
    /// A plugin failed and the route's `on_error` dead-letters the message, with why.
    DeadLetter(Target, String),
}

/// The plugins a message runs through, and what the chain needs of its route.
pub struct Chain<'a> {
    /// The route's name, for logs and the plugins' `source().route`.
    pub route: &'a str,
    /// Outbound for a route reading from a broker, inbound for clients' messages.
    pub direction: Direction,
    /// What a failing plugin does to the message.
    pub on_error: &'a ErrorPolicy,
    /// Plugin names, in order.
    pub plugins: &'a [String],
}

impl<'a> Chain<'a> {
    /// The chain `plugins` on `route` (its own `plugins:`, or a shadow's or a canary's version).
    pub fn of(route: &'a Route, plugins: &'a [String]) -> Self {
        Chain {
            route: &route.name,
            direction: if route.source.is_some() {
                Direction::Outbound
            } else {
                Direction::Inbound
            },
            on_error: &route.on_error,
            plugins,
        }
    }
}

/// Runs `msg` through `chain`: each plugin gets every output of the one before. What the
/// proxy, a shadow, `barnabas replay` and `barnabas plugin test` run alike.
pub async fn run_chain(
    plugins: &HashMap<String, Arc<Plugin>>,
    meters: Option<&HashMap<String, PluginMeters>>,
    chain: &Chain<'_>,
    msg: &Message,
) -> Result<Vec<Item>, Stop> {
    let route = chain.route;
    let mut items = vec![Item {
        output: None,
        output_chosen_by: None,
        topic: msg.topic.clone(),
        headers: msg.headers.clone(),
        key: msg.key.clone(),
        payload: msg.payload.clone(),
    }];
    for name in chain.plugins {
        let mut dropped = None;
        let mut next = Vec::with_capacity(items.len());
        for item in items {
            let started = Instant::now();
            let result = match plugins.get(name) {
                Some(plugin) => plugin
                    .call(PluginInput {
                        source: &msg.source,
                        direction: chain.direction,
                        route,
                        topic: &item.topic,
                        qos: msg.source.qos,
                        headers: &item.headers,
                        key: item.key.as_ref(),
                        payload: &item.payload,
                    })
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("is not loaded".to_string()),
            };
            if let Some(m) = meters.and_then(|m| m.get(name)) {
                m.called(started.elapsed(), result.is_err());
            }
            match result {
                Ok(Verdict::Forward(outputs)) => {
                    for o in outputs {
                        let (output, output_chosen_by) = match o.name {
                            Some(chosen) => (Some(chosen), Some(name.clone())),
                            None => (item.output.clone(), item.output_chosen_by.clone()),
                        };
                        next.push(Item {
                            output,
                            output_chosen_by,
                            topic: o.topic,
                            headers: o.headers,
                            key: o.key,
                            payload: o.payload,
                        });
                    }
                }
                Ok(Verdict::Drop(reason)) => {
                    dropped = Some(format!("dropped by plugin {name:?}: {reason}"));
                    tracing::debug!(route, plugin = %name, id = msg.id, reason, "dropped");
                }
                Ok(Verdict::Reject(reason)) => {
                    // A 3.1.1 client cannot be told, so the log is where an author sees it.
                    if PLUGIN_REJECTS_LOGGED.allow() {
                        tracing::info!(route, plugin = %name, id = msg.id, topic = %msg.source.topic, reason, "rejected by plugin");
                    }
                    return Err(Stop::Outcome(Outcome::Rejected(
                        Rejection::Plugin,
                        format!("rejected by plugin {name:?}: {reason}"),
                    )));
                }
                Err(error) => {
                    let reason = format!("plugin {name:?} {error}");
                    if PLUGIN_FAILURES_LOGGED.allow() {
                        tracing::warn!(route, plugin = %name, id = msg.id, %error, policy = %chain.on_error, "plugin failed");
                    }
                    match chain.on_error {
                        ErrorPolicy::Reject => {
                            return Err(Stop::Outcome(Outcome::Rejected(
                                Rejection::PluginFailed,
                                reason,
                            )));
                        }
                        ErrorPolicy::Pass => next.push(item),
                        ErrorPolicy::DeadLetter(t) => {
                            return Err(Stop::DeadLetter(t.clone(), reason));
                        }
                    }
                }
            }
        }
        if next.len() > MAX_OUTPUTS {
            return Err(Stop::Outcome(Outcome::Rejected(
                Rejection::PluginFailed,
                format!(
                    "plugin {name:?} fanned out to {} outputs; the limit is {MAX_OUTPUTS}",
                    next.len()
                ),
            )));
        }
        items = next;
        if items.is_empty() {
            let reason = dropped.unwrap_or_else(|| format!("plugin {name:?} forwarded nothing"));
            return Err(Stop::Outcome(Outcome::Dropped(reason)));
        }
    }
    Ok(items)
}

/// Plugin rejects and failures are logged at most this often (per kind, over all routes): a
/// plugin that refuses every message must not flood the log, but the first ones show.
static PLUGIN_REJECTS_LOGGED: LogLimit = LogLimit::new();
static PLUGIN_FAILURES_LOGGED: LogLimit = LogLimit::new();
static UNDEFINED_OUTPUTS_LOGGED: LogLimit = LogLimit::new();

/// Lets a log line through at most [`LogLimit::PER_SECOND`] times a second.
pub struct LogLimit {
    /// The second (since the process started) of the current window, and lines let through in it.
    window: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    /// Lines per second let through.
    pub const PER_SECOND: u64 = 5;

    /// A limit with nothing logged yet.
    pub const fn new() -> Self {
        LogLimit {
            window: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log this line. The window's second sits in the high bits and the count in the
    /// low 16, so one atomic holds both.
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let second = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window, count) = (current >> 16, current & 0xffff);
            let next = if window == second {
                if count >= Self::PER_SECOND {
                    return false;
                }
                current + 1
            } else {
                (second << 16) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// A message whose records are all with their destinations (or that needed none): what is left
/// is to wait for the acknowledgements. It owns everything it needs, so it outlives the snapshot
/// and the connection that made it.
pub struct Pending {
    id: u64,
    generation: u64,
    waiting: Waiting,
    meters: RouteMeters,
    /// For a route with a canary: which version took the message.
    canary: Option<CanaryCount>,
}

/// Counts a canary route's message under the version that took it, once its outcome is known.
struct CanaryCount {
    metrics: Arc<Metrics>,
    route: String,
    version: &'static str,
}

enum Waiting {
    /// Settled without a broker: dropped, rejected, or refused before any record was handed over.
    Settled(Outcome),
    /// The acknowledgement of every record; `dead_letter` when they are a dead-letter delivery.
    Acks { acks: Vec<Ack>, dead_letter: bool },
}

impl Pending {
    /// Waits for every acknowledgement and says what happened to the message.
    pub async fn outcome(self) -> Outcome {
        let outcome = match self.waiting {
            Waiting::Settled(outcome) => outcome,
            Waiting::Acks { acks, dead_letter } => {
                let records = acks.len();
                let outcome = combine(join_all(acks).await);
                if matches!(outcome, Outcome::Delivered) {
                    if dead_letter {
                        self.meters.dead_lettered();
                    } else {
                        self.meters.delivered(records);
                    }
                }
                outcome
            }
        };
        self.meters.finished(&outcome);
        if let Some(c) = &self.canary {
            c.metrics.canary(&c.route, c.version, &outcome);
        }
        tracing::trace!(
            id = self.id,
            generation = self.generation,
            outcome = outcome.kind(),
            "dispatched"
        );
        outcome
    }
}

/// Every send succeeded: delivered. Any retriable failure: failed, so the client resends.
/// Otherwise a permanent failure: rejected; or, when the only trouble was that no client
/// subscribed, rejected as having no subscriber.
fn combine(results: Vec<Result<(), BrokerError>>) -> Outcome {
    let mut permanent = None;
    let mut nobody = None;
    for r in results {
        match r {
            Ok(()) => {}
            Err(BrokerError::Retriable(e)) => return Outcome::Failed(e),
            Err(BrokerError::Permanent(e)) => permanent = permanent.or(Some(e)),
            Err(BrokerError::NoReceiver(e)) => nobody = nobody.or(Some(e)),
        }
    }
    match (permanent, nobody) {
        (Some(e), _) => Outcome::Rejected(Rejection::Undeliverable, e),
        (None, Some(e)) => Outcome::Rejected(Rejection::NoSubscriber, e),
        (None, None) => Outcome::Delivered,
    }
}

/// The current snapshot, swapped whole by a reload.
pub struct Pipeline {
    current: ArcSwap<Snapshot>,
    /// The generation serving now, for connections that re-check their client against a new
    /// config (a user removed from `auth:` is disconnected).
    generation: tokio::sync::watch::Sender<u64>,
}

impl Pipeline {
    /// A pipeline serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let (generation, _) = tokio::sync::watch::channel(snapshot.generation);
        Pipeline {
            current: ArcSwap::from_pointee(snapshot),
            generation,
        }
    }

    /// Whether the ACL serving now lets `identity` (`None`: anonymous) with `client_id` publish to
    /// `topic`. Asked per message, so it borrows the snapshot rather than taking a reference.
    pub fn may_publish(&self, identity: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.current
            .load()
            .auth
            .may_publish(identity, client_id, topic)
    }

    /// Whether the ACL serving now lets `identity` with `client_id` subscribe to `filter`.
    pub fn may_subscribe(&self, identity: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.current
            .load()
            .auth
            .may_subscribe(identity, client_id, filter)
    }

    /// Changes whenever a new snapshot starts serving.
    pub fn generations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The snapshot new messages start on.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `snapshot` the one new messages start on; messages under way finish on theirs.
    pub fn swap(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        self.current.store(Arc::new(snapshot));
        self.generation.send_replace(generation);
    }

    /// Runs one message on the current snapshot up to the brokers' acknowledgements.
    pub async fn prepare(&self, msg: Message) -> Pending {
        self.current.load_full().prepare(msg).await
    }

    /// Runs one message on the current snapshot.
    pub async fn dispatch(&self, msg: Message) -> Outcome {
        self.prepare(msg).await.outcome().await
    }
}

fn embedded_bootstrap(embedded: &mut Option<EmbeddedKafka>) -> Result<String, BrokerError> {
    if let Some(k) = embedded {
        return Ok(k.bootstrap().to_string());
    }
    let kafka = EmbeddedKafka::start()?;
    let bootstrap = kafka.bootstrap().to_string();
    tracing::info!(bootstrap = %bootstrap, "embedded Kafka started: read it with `kcat -b {bootstrap} -C -t TOPIC`");
    *embedded = Some(kafka);
    Ok(bootstrap)
}
