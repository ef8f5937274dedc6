//! The MQTT load generator: one rumqttc MQTT 5 client per connection, publishing QoS 1 messages
//! flat out (up to a window in flight) and recording what was acknowledged.
//!
//! Each payload is a JSON object with the message's id (`CLIENT-SEQ`) and its send time in
//! microseconds since the Unix epoch, so whoever reads the destination can tell every message
//! apart, count what is missing or duplicated, and measure end-to-end latency. The
//! `temperature` field lets the `enrich` and `threshold` example plugins process it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{self, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// One client's load.
#[derive(Clone)]
pub struct Load {
    /// The proxy's MQTT listener.
    pub addr: SocketAddr,
    /// The client id, also the payload prefix.
    pub client_id: String,
    /// The topic published to.
    pub topic: String,
    /// Messages in flight at most.
    pub window: u16,
    /// Set to stop publishing; the client then waits for what is outstanding.
    pub stop: Arc<AtomicBool>,
    /// Counts every successful acknowledgement as it arrives, for throughput sampling.
    pub acked_counter: Arc<AtomicU64>,
    /// Publish at most this many messages (until `stop` when unset).
    pub count: Option<u64>,
    /// Bytes of padding in each payload, to reach a payload size.
    pub pad: usize,
}

/// The payload of message `seq` of `client`: `{"id":"CLIENT-SEQ","ts":MICROS,...}`.
pub fn payload(client: &str, seq: u64, pad: &str) -> String {
    format!(
        r#"{{"id":"{client}-{seq}","ts":{},"temperature":20,"pad":"{pad}"}}"#,
        now_micros()
    )
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// The id of a payload made by [`payload`], and its send time.
pub fn parse_payload(bytes: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let id_start = text.find(r#""id":""#)? + 6;
    let id_end = id_start + text[id_start..].find('"')?;
    let ts_start = text.find(r#""ts":"#)? + 5;
    let ts_len = text[ts_start..].find(|c: char| !c.is_ascii_digit())?;
    Some((
        text[id_start..id_end].to_string(),
        text[ts_start..ts_start + ts_len].parse().ok()?,
    ))
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Payloads acknowledged with reason code 0 (success), in order.
    pub acked: Vec<String>,
    /// Payloads acknowledged with another reason code, with that code.
    pub refused: Vec<(String, u8)>,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl Load {
    /// Publishes until `stop` is set, then waits for every outstanding acknowledgement.
    pub async fn run(self) -> LoadReport {
        let mut opts = MqttOptions::new(
            &self.client_id,
            self.addr.ip().to_string(),
            self.addr.port(),
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_outgoing_inflight_upper_limit(self.window);
        let (client, mut eventloop) = AsyncClient::new(opts, usize::from(self.window));
        // Payloads queued but not yet written, in publish order: rumqttc reports each write with
        // the packet id it chose, in the same order.
        let queued: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let producer = {
            let (queued, topic, id, stop, count) = (
                queued.clone(),
                self.topic.clone(),
                self.client_id.clone(),
                self.stop.clone(),
                self.count.unwrap_or(u64::MAX),
            );
            let pad = "x".repeat(self.pad);
            let client = client.clone();
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) && seq < count {
                    let payload = payload(&id, seq, &pad);
                    if let Ok(mut q) = queued.lock() {
                        q.push_back(payload.clone());
                    }
                    if client
                        .publish(&topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    seq += 1;
                }
                seq
            })
        };
        let mut producer = Some(producer);
        let mut report = LoadReport::default();
        let mut in_flight: HashMap<u16, String> = HashMap::new();
        let mut sent = 0u64;
        let mut total = None;
        while total.is_none_or(|t| sent < t || !in_flight.is_empty()) {
            let event = tokio::select! {
                event = eventloop.poll() => event,
                done = async {
                    match producer.as_mut() {
                        Some(p) => p.await.unwrap_or_default(),
                        None => std::future::pending().await,
                    }
                }, if producer.is_some() => {
                    total = Some(done);
                    producer = None;
                    continue;
                }
            };
            match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let payload = queued
                        .lock()
                        .ok()
                        .and_then(|mut q| q.pop_front())
                        .unwrap_or_default();
                    in_flight.insert(pkid, payload);
                    sent += 1;
                }
                Ok(Event::Incoming(v5::Packet::PubAck(a))) => {
                    let payload = in_flight.remove(&a.pkid).unwrap_or_default();
                    if a.reason == PubAckReason::Success {
                        self.acked_counter.fetch_add(1, Ordering::Relaxed);
                        report.acked.push(payload);
                    } else {
                        report.refused.push((payload, reason_code(a.reason)));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    report.error = Some(e.to_string());
                    break;
                }
            }
        }
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
        report
    }
}

/// Publishes one QoS 1 message on a new connection and returns the PUBACK's reason code.
pub async fn publish_once(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    payload: String,
) -> anyhow::Result<u8> {
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    let ack = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(v5::Packet::PubAck(a)) = eventloop.poll().await? {
                return anyhow::Ok(reason_code(a.reason));
            }
        }
    })
    .await??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(ack)
}

/// The MQTT 5 reason code of a PUBACK.
fn reason_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}
