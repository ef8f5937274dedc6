//! The proxy's metrics, in one registry served as Prometheus text by the admin endpoint.
//!
//! Families are registered once, when the proxy starts. A snapshot takes its own handles (one set
//! of counters per route, one histogram per plugin and per destination) when it is built, so the
//! data path increments plain atomics and never looks a label set up per message. A route or
//! plugin removed by a reload keeps its last values: Prometheus counters do not go backwards.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::message::Outcome;

/// The `route` label of messages no route took.
pub const UNMATCHED: &str = "(unmatched)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabel {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabel {
    route: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CanaryLabel {
    route: String,
    version: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationErrorLabel {
    destination: String,
    retriable: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerResultLabel {
    listener: String,
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Plugin calls take microseconds to milliseconds: 1 µs to about 0.5 s.
fn plugin_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 3.0, 13))
}

/// Broker acknowledgements take a fraction of a millisecond to seconds: 100 µs to about 6.5 s.
fn ack_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 17))
}

/// Every metric the proxy keeps.
pub struct Metrics {
    registry: Registry,
    messages_in: Family<RouteLabel, Counter>,
    messages_out: Family<RouteLabel, Counter>,
    messages_dropped: Family<RouteLabel, Counter>,
    messages_rejected: Family<RouteLabel, Counter>,
    messages_failed: Family<RouteLabel, Counter>,
    messages_dead_lettered: Family<RouteLabel, Counter>,
    plugin_calls: HistogramFamily<PluginLabel>,
    plugin_failures: Family<PluginLabel, Counter>,
    destination_acks: HistogramFamily<DestinationLabel>,
    destination_errors: Family<DestinationErrorLabel, Counter>,
    producer_renewals: Family<DestinationLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    wills: Family<ResultLabel, Counter>,
    logins: Family<ResultLabel, Counter>,
    acl_denied: Family<ListenerLabel, Counter>,
    tls_handshakes: Family<ListenerResultLabel, Counter>,
    tls_reloads: Family<ListenerResultLabel, Counter>,
    connections_refused: Family<ListenerLabel, Counter>,
    inflight_bytes: Gauge,
    generation: Gauge,
    connections: Family<ListenerLabel, Gauge>,
    undelivered: Family<RouteStatusLabel, Counter>,
    shadow: Family<RouteResultLabel, Counter>,
    canary: Family<CanaryLabel, Counter>,
    source_lag: Family<RouteLabel, Gauge>,
    mqtt_subscriptions: Gauge,
    mqtt_kept_sessions: Gauge,
    mqtt_queued: Gauge,
}

impl Metrics {
    /// A registry with every family registered and no samples yet.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("barnabas");
        let messages_in = Family::default();
        let messages_out = Family::default();
        let messages_dropped = Family::default();
        let messages_rejected = Family::default();
        let messages_failed = Family::default();
        let messages_dead_lettered = Family::default();
        let plugin_calls = HistogramFamily::new_with_constructor(plugin_buckets as fn() -> _);
        let plugin_failures = Family::default();
        let destination_acks = HistogramFamily::new_with_constructor(ack_buckets as fn() -> _);
        let destination_errors = Family::default();
        let producer_renewals = Family::default();
        let reloads = Family::default();
        let wills = Family::default();
        let logins = Family::default();
        let acl_denied = Family::default();
        let tls_handshakes = Family::default();
        let tls_reloads = Family::default();
        let connections_refused = Family::default();
        let inflight_bytes = Gauge::default();
        let generation = Gauge::default();
        let connections = Family::default();
        let undelivered = Family::default();
        let shadow = Family::default();
        let canary = Family::default();
        let source_lag = Family::default();
        let mqtt_subscriptions = Gauge::default();
        let mqtt_kept_sessions = Gauge::default();
        let mqtt_queued = Gauge::default();
        registry.register(
            "undelivered",
            "Records a source route read that did not reach every subscriber they matched, by route and status (not-connected, timed-out, refused, rejected, failed)",
            undelivered.clone(),
        );
        registry.register(
            "shadow_messages",
            "Messages a route's shadow version ran on, by route and result: same or different from the serving version, or skipped (too many shadow runs under way)",
            shadow.clone(),
        );
        registry.register(
            "canary_messages",
            "Messages of a route with a canary, by route, version (serving or canary) and outcome (delivered, dropped, rejected, failed)",
            canary.clone(),
        );
        registry.register(
            "source_lag",
            "Records of a source route's topic not yet read by it (librdkafka's consumer lag, summed over partitions, every 5 s)",
            source_lag.clone(),
        );
        registry.register(
            "mqtt_subscriptions",
            "MQTT subscriptions, of connected clients and of kept sessions (sampled every 10 s)",
            mqtt_subscriptions.clone(),
        );
        registry.register(
            "mqtt_kept_sessions",
            "MQTT sessions kept for clients that are away (sampled every 10 s)",
            mqtt_kept_sessions.clone(),
        );
        registry.register(
            "mqtt_queued_messages",
            "Messages waiting in MQTT session queues to be sent (sampled every 10 s)",
            mqtt_queued.clone(),
        );
        registry.register(
            "messages_in",
            "Messages received, by the route that took them",
            messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Records delivered to a destination and acknowledged by it, by route",
            messages_out.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages a plugin or the unmatched policy dropped, by route",
            messages_dropped.clone(),
        );
        registry.register(
            "messages_rejected",
            "Messages refused for good (plugin reject, plugin failure, unroutable), by route",
            messages_rejected.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages not delivered because a destination was unavailable; the client may resend",
            messages_failed.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages sent to a dead-letter target instead of their route's destination",
            messages_dead_lettered.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Time spent in one plugin call, by plugin",
            plugin_calls.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that trapped, timed out, ran out of memory or returned an error",
            plugin_failures.clone(),
        );
        registry.register(
            "destination_ack_duration_seconds",
            "Time from handing a record to a destination to its acknowledgement, by destination",
            destination_acks.clone(),
        );
        registry.register(
            "destination_errors",
            "Records a destination failed to deliver, by destination and whether a retry can help",
            destination_errors.clone(),
        );
        registry.register(
            "kafka_producer_renewals",
            "Kafka producers replaced because they could not deliver any more (fatal error, or an epoch the broker refuses)",
            producer_renewals.clone(),
        );
        registry.register(
            "reloads",
            "Config reloads, by result (applied, rejected, restart_needed)",
            reloads.clone(),
        );
        registry.register(
            "wills",
            "Last Will attempts, by result (delivered, dropped, rejected, retrying, abandoned)",
            wills.clone(),
        );
        registry.register(
            "logins",
            "Logins with a password or a client certificate, by result (accepted, refused, throttled: refused unchecked after repeated failures from the address)",
            logins.clone(),
        );
        registry.register(
            "acl_denied",
            "Messages the ACL refused before any plugin or broker saw them, by listener",
            acl_denied.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on TLS listeners, by listener and result (ok, failed: a bad or missing client certificate, a protocol error, or a client gone; timeout)",
            tls_handshakes.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate files read again after a change, by listener and result (applied, rejected: the previous certificate keeps serving)",
            tls_reloads.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because a listener or the proxy was at its connection limit",
            connections_refused.clone(),
        );
        registry.register(
            "inflight_bytes",
            "Bytes of messages under way between a client and its acknowledgement",
            inflight_bytes.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Generation of the config snapshot serving new messages",
            generation.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now, by listener",
            connections.clone(),
        );
        Arc::new(Metrics {
            registry,
            messages_in,
            messages_out,
            messages_dropped,
            messages_rejected,
            messages_failed,
            messages_dead_lettered,
            plugin_calls,
            plugin_failures,
            destination_acks,
            destination_errors,
            producer_renewals,
            reloads,
            wills,
            logins,
            acl_denied,
            tls_handshakes,
            tls_reloads,
            connections_refused,
            inflight_bytes,
            generation,
            connections,
            undelivered,
            shadow,
            canary,
            source_lag,
            mqtt_subscriptions,
            mqtt_kept_sessions,
            mqtt_queued,
        })
    }

    /// The counters of route `name` (or [`UNMATCHED`]).
    pub fn route(&self, name: &str) -> RouteMeters {
        let label = RouteLabel {
            route: name.to_string(),
        };
        RouteMeters {
            messages_in: self.messages_in.get_or_create_owned(&label),
            messages_out: self.messages_out.get_or_create_owned(&label),
            dropped: self.messages_dropped.get_or_create_owned(&label),
            rejected: self.messages_rejected.get_or_create_owned(&label),
            failed: self.messages_failed.get_or_create_owned(&label),
            dead_lettered: self.messages_dead_lettered.get_or_create_owned(&label),
        }
    }

    /// The meters of plugin `name`.
    pub fn plugin(&self, name: &str) -> PluginMeters {
        let label = PluginLabel {
            plugin: name.to_string(),
        };
        PluginMeters {
            calls: self.plugin_calls.get_or_create_owned(&label),
            failures: self.plugin_failures.get_or_create_owned(&label),
        }
    }

    /// The meters of destination `name`.
    pub fn destination(&self, name: &str) -> DestinationMeters {
        let error = |retriable: bool| DestinationErrorLabel {
            destination: name.to_string(),
            retriable: retriable.to_string(),
        };
        DestinationMeters {
            acks: self
                .destination_acks
                .get_or_create_owned(&DestinationLabel {
                    destination: name.to_string(),
                }),
            retriable_errors: self.destination_errors.get_or_create_owned(&error(true)),
            permanent_errors: self.destination_errors.get_or_create_owned(&error(false)),
        }
    }

    /// The counter of Kafka producer replacements of destination `name`.
    pub fn producer_renewals(&self, name: &str) -> Counter {
        self.producer_renewals
            .get_or_create_owned(&DestinationLabel {
                destination: name.to_string(),
            })
    }

    /// A shadow run on `route` ended with `result` (`same`, `different`, `skipped`).
    pub fn shadow(&self, route: &str, result: &str) {
        self.shadow
            .get_or_create(&RouteResultLabel {
                route: route.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A message of `route` taken by `version` (`serving` or `canary`) finished with `outcome`.
    pub fn canary(&self, route: &str, version: &str, outcome: &Outcome) {
        self.canary
            .get_or_create(&CanaryLabel {
                route: route.to_string(),
                version: version.to_string(),
                outcome: outcome.kind().to_string(),
            })
            .inc();
    }

    /// Counts one record of source route `route` that did not reach everyone, by `status`.
    pub fn undelivered(&self, route: &str, status: &str) {
        self.undelivered
            .get_or_create(&RouteStatusLabel {
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// Sets how far source route `route` is behind the end of its topic.
    pub fn source_lag(&self, route: &str, lag: i64) {
        self.source_lag
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .set(lag);
    }

    /// Sets the MQTT session gauges: subscriptions, kept sessions, queued messages.
    pub fn mqtt_sessions(&self, subscriptions: usize, kept: usize, queued: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.mqtt_subscriptions.set(gauge(subscriptions));
        self.mqtt_kept_sessions.set(gauge(kept));
        self.mqtt_queued.set(gauge(queued));
    }

    /// Counts one reload attempt by its result.
    pub fn reloaded(&self, result: &str) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one message the ACL refused on `listener`.
    pub fn acl_denied(&self, listener: &str) {
        self.acl_denied
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// Counts one TLS handshake on `listener` by its result.
    pub fn tls_handshake(&self, listener: &str, result: &str) {
        self.tls_handshakes
            .get_or_create(&ListenerResultLabel {
                listener: listener.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one reload of `listener`'s certificate files by its result.
    pub fn tls_reload(&self, listener: &str, result: &str) {
        self.tls_reloads
            .get_or_create(&ListenerResultLabel {
                listener: listener.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one login (password or client certificate) by its result.
    pub fn login(&self, result: &str) {
        self.logins
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one attempt to publish a Last Will by its result.
    pub fn will(&self, result: &str) {
        self.wills
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a connection refused at a connection limit on `listener`.
    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// Adds `delta` bytes to the in-flight gauge.
    pub fn inflight_bytes(&self, delta: i64) {
        self.inflight_bytes.inc_by(delta);
    }

    /// Records the generation now serving.
    pub fn serving(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// Counts a connection on `listener` as open until the returned guard is dropped.
    pub fn connection_opened(&self, listener: &str) -> ConnectionGuard {
        let gauge = self.connections.get_or_create_owned(&ListenerLabel {
            listener: listener.to_string(),
        });
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Every metric, in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The counters of one route.
#[derive(Clone, Default)]
pub struct RouteMeters {
    messages_in: Counter,
    messages_out: Counter,
    dropped: Counter,
    rejected: Counter,
    failed: Counter,
    dead_lettered: Counter,
}

impl RouteMeters {
    /// A message arrived.
    pub fn received(&self) {
        self.messages_in.inc();
    }

    /// `records` records were acknowledged by their destinations.
    pub fn delivered(&self, records: usize) {
        self.messages_out.inc_by(records as u64);
    }

    /// A message went to a dead-letter target.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }

    /// A message finished with `outcome`.
    pub fn finished(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Delivered => {}
            Outcome::Dropped(_) => {
                self.dropped.inc();
            }
            Outcome::Rejected(..) => {
                self.rejected.inc();
            }
            Outcome::Failed(_) => {
                self.failed.inc();
            }
        }
    }
}

/// The meters of one plugin.
#[derive(Clone)]
pub struct PluginMeters {
    calls: Histogram,
    failures: Counter,
}

impl PluginMeters {
    /// One call took `took`; `failed` if it trapped, timed out or returned an error.
    pub fn called(&self, took: Duration, failed: bool) {
        self.calls.observe(took.as_secs_f64());
        if failed {
            self.failures.inc();
        }
    }
}

/// The meters of one destination.
#[derive(Clone)]
pub struct DestinationMeters {
    acks: Histogram,
    retriable_errors: Counter,
    permanent_errors: Counter,
}

impl DestinationMeters {
    /// A record was acknowledged `took` after it was handed over.
    pub fn acked(&self, took: Duration) {
        self.acks.observe(took.as_secs_f64());
    }

    /// A record failed.
    pub fn failed(&self, retriable: bool) {
        if retriable {
            self.retriable_errors.inc();
        } else {
            self.permanent_errors.inc();
        }
    }
}

/// Decrements its listener's open-connection gauge when dropped.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
