//! The MQTT load generator: one rumqttc client per connection (MQTT 5 or 3.1.1), publishing at
//! QoS 0, 1 or 2, flat out (up to a window in flight) or at a target rate, and recording what was
//! acknowledged: PUBACK at QoS 1, PUBCOMP at QoS 2, the write itself at QoS 0.
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
use rumqttc::v5::mqttbytes::v5::{self, PubAckReason, PubRecReason};
use tokio::time::Instant;

/// The MQTT protocol version a load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V311,
    /// MQTT 5.
    #[default]
    #[value(name = "5")]
    V5,
}

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
    /// The protocol version.
    pub version: MqttVersion,
    /// The QoS of every PUBLISH: 0, 1 or 2.
    pub qos: u8,
    /// Messages per second on this connection; flat out when unset.
    pub rate: Option<f64>,
    /// TLS, when the listener speaks it: the client config that trusts its CA.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Waits until message `seq` is due on an open schedule of `rate` messages per second from
/// `started`, however late the previous ones were; returns at once when there is no rate.
pub async fn pace(started: Instant, seq: u64, rate: Option<f64>) {
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        tokio::time::sleep_until(started + Duration::from_secs_f64(seq as f64 / rate)).await;
    }
}

/// A stop flag that turns true after `duration` (never, when there is none).
pub fn stop_after(duration: Option<Duration>) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(duration) = duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        });
    }
    stop
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
    /// Payloads acknowledged with reason code 0 (success), in order (at QoS 0: written).
    pub acked: Vec<String>,
    /// Payloads acknowledged with another reason code, with that code.
    pub refused: Vec<(String, u8)>,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl Load {
    /// Publishes until `stop` is set (or `count` is reached), then waits for every outstanding
    /// acknowledgement.
    pub async fn run(self) -> LoadReport {
        let (client, mut events) = connect(&self);
        // Payloads queued but not yet written, in publish order: rumqttc reports each write with
        // the packet id it chose, in the same order.
        let queued: Arc<Mutex<VecDeque<String>>> = Arc::default();
        // The producer starts once the server has accepted the connection, so that no message's
        // latency holds the connection's set-up, and a rate's schedule starts from there.
        let (connected_tx, connected) = tokio::sync::oneshot::channel::<()>();
        let mut connected_tx = Some(connected_tx);
        let producer = {
            let (queued, topic, id, stop, count) = (
                queued.clone(),
                self.topic.clone(),
                self.client_id.clone(),
                self.stop.clone(),
                self.count.unwrap_or(u64::MAX),
            );
            let (qos, rate) = (self.qos, self.rate);
            let pad = "x".repeat(self.pad);
            let client = client.clone();
            tokio::spawn(async move {
                if connected.await.is_err() {
                    return 0;
                }
                let started = Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) && seq < count {
                    pace(started, seq, rate).await;
                    // The stop may have come while waiting for the message's turn.
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let payload = payload(&id, seq, &pad);
                    if let Ok(mut q) = queued.lock() {
                        q.push_back(payload.clone());
                    }
                    if client.publish(&topic, qos, payload).await.is_err() {
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
            // rumqttc's `poll` is not cancel-safe: dropped while connecting, the next call opens
            // a second connection with the same client id, and whichever CONNECT the server takes
            // last closes the other; dropped elsewhere, it may lose what it was reading. So the
            // producer finishing must not drop this future: it is polled on until it completes.
            let next = events.next();
            tokio::pin!(next);
            let event = loop {
                tokio::select! {
                    event = &mut next => break Some(event),
                    done = async {
                        match producer.as_mut() {
                            Some(p) => p.await.unwrap_or_default(),
                            None => std::future::pending().await,
                        }
                    }, if producer.is_some() => {
                        total = Some(done);
                        producer = None;
                        if sent >= done && in_flight.is_empty() {
                            break None;
                        }
                    }
                }
            };
            let Some(event) = event else { break };
            match event {
                Ok(Progress::Written(pkid)) => {
                    let payload = queued
                        .lock()
                        .ok()
                        .and_then(|mut q| q.pop_front())
                        .unwrap_or_default();
                    sent += 1;
                    if self.qos == 0 {
                        // Nothing comes back at QoS 0: written is as far as the client knows.
                        self.acked_counter.fetch_add(1, Ordering::Relaxed);
                        report.acked.push(payload);
                    } else {
                        in_flight.insert(pkid, payload);
                    }
                }
                Ok(Progress::Acked(pkid)) => {
                    let payload = in_flight.remove(&pkid).unwrap_or_default();
                    self.acked_counter.fetch_add(1, Ordering::Relaxed);
                    report.acked.push(payload);
                }
                Ok(Progress::Refused(pkid, code)) => {
                    let payload = in_flight.remove(&pkid).unwrap_or_default();
                    report.refused.push((payload, code));
                }
                Ok(Progress::Connected) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Progress::Other) => {}
                Err(e) => {
                    report.error = Some(e);
                    break;
                }
            }
        }
        client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
        report
    }
}

/// What one event of the client's event loop means for the load.
enum Progress {
    /// The server accepted the connection (CONNACK).
    Connected,
    /// A PUBLISH with this packet id was written.
    Written(u16),
    /// Its flow completed successfully (PUBACK at QoS 1, PUBCOMP at QoS 2).
    Acked(u16),
    /// It was refused with this reason code (MQTT 5 only).
    Refused(u16, u8),
    Other,
}

/// The client half of either protocol version.
#[derive(Clone)]
enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// The event-loop half of either protocol version.
enum Events {
    V5(Box<rumqttc::v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

fn transport(tls: &Arc<rustls::ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone()))
}

/// A rustls client config that trusts the CA certificates in `ca` (PEM).
pub fn tls_client(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in barnabas::edge::tls::read_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(barnabas::edge::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// New TLS connections per second to the MQTT listener at `addr`: `workers` at a time, each
/// connecting, completing the handshake, sending a CONNECT and reading the CONNACK, then closing,
/// over and over for `duration`.
pub async fn tls_connect_rate(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An MQTT 3.1.1 CONNECT: clean session, keep-alive 30 s, client id "c".
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'c',
    ];
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let tls = tls.clone();
            tokio::spawn(async move {
                let connector = tokio_rustls::TlsConnector::from(tls);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                    let mut stream = connector.connect(name, tcp).await?;
                    stream.write_all(&CONNECT).await?;
                    let mut connack = [0u8; 4];
                    stream.read_exact(&mut connack).await?;
                    anyhow::ensure!(connack[0] == 0x20, "not a CONNACK: {connack:?}");
                    let _ = stream.shutdown().await;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn connect(load: &Load) -> (Client, Events) {
    let (host, port) = (load.addr.ip().to_string(), load.addr.port());
    let cap = usize::from(load.window.max(1));
    match load.version {
        MqttVersion::V5 => {
            let mut opts = rumqttc::v5::MqttOptions::new(&load.client_id, host, port);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_outgoing_inflight_upper_limit(load.window);
            if let Some(tls) = &load.tls {
                opts.set_transport(transport(tls));
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(opts, cap);
            (Client::V5(client), Events::V5(Box::new(events)))
        }
        MqttVersion::V311 => {
            let mut opts = rumqttc::MqttOptions::new(&load.client_id, host, port);
            opts.set_keep_alive(Duration::from_secs(30));
            opts.set_inflight(load.window);
            // Room for the largest payloads of the size curve (MQTT 5 learns it from CONNACK).
            let largest = (load.pad + 65_536).max(10 * 1024);
            opts.set_max_packet_size(largest, largest);
            if let Some(tls) = &load.tls {
                opts.set_transport(transport(tls));
            }
            let (client, events) = rumqttc::AsyncClient::new(opts, cap);
            (Client::V311(client), Events::V311(Box::new(events)))
        }
    }
}

impl Client {
    async fn publish(&self, topic: &str, qos: u8, payload: String) -> Result<(), ()> {
        match self {
            Client::V5(c) => {
                let qos = rumqttc::v5::mqttbytes::qos(qos).ok_or(())?;
                c.publish(topic, qos, false, payload).await.map_err(|_| ())
            }
            Client::V311(c) => {
                let qos = rumqttc::qos(qos).map_err(|_| ())?;
                c.publish(topic, qos, false, payload).await.map_err(|_| ())
            }
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V5(c) => c.disconnect().await.map_err(|_| ()),
            Client::V311(c) => c.disconnect().await.map_err(|_| ()),
        };
    }
}

impl Events {
    async fn next(&mut self) -> Result<Progress, String> {
        use rumqttc::v5::Event as E5;
        match self {
            Events::V5(events) => Ok(match events.poll().await.map_err(|e| e.to_string())? {
                E5::Incoming(v5::Packet::ConnAck(_)) => Progress::Connected,
                E5::Outgoing(Outgoing::Publish(pkid)) => Progress::Written(pkid),
                // "No matching subscribers" (0x10) is a success: a broker with nobody subscribed
                // took the message.
                E5::Incoming(v5::Packet::PubAck(a))
                    if matches!(
                        a.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) =>
                {
                    Progress::Acked(a.pkid)
                }
                E5::Incoming(v5::Packet::PubAck(a)) => {
                    Progress::Refused(a.pkid, reason_code(&a.reason))
                }
                E5::Incoming(v5::Packet::PubRec(r))
                    if !matches!(
                        r.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    ) =>
                {
                    Progress::Refused(r.pkid, reason_code(&r.reason))
                }
                E5::Incoming(v5::Packet::PubComp(c)) => Progress::Acked(c.pkid),
                _ => Progress::Other,
            }),
            Events::V311(events) => Ok(match events.poll().await.map_err(|e| e.to_string())? {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => Progress::Connected,
                rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => Progress::Written(pkid),
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a)) => Progress::Acked(a.pkid),
                rumqttc::Event::Incoming(rumqttc::Packet::PubComp(c)) => Progress::Acked(c.pkid),
                _ => Progress::Other,
            }),
        }
    }
}

/// Publishes one QoS 1 message on a new connection and returns the PUBACK's reason code.
pub async fn publish_once(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    payload: String,
) -> anyhow::Result<u8> {
    use rumqttc::v5::{AsyncClient, Event, MqttOptions, mqttbytes::QoS};
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 4);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    let ack = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(v5::Packet::PubAck(a)) = eventloop.poll().await? {
                return anyhow::Ok(reason_code(&a.reason));
            }
        }
    })
    .await??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(ack)
}

/// The MQTT 5 reason code behind rumqttc's PUBACK and PUBREC reason enums, which share their
/// variant names.
pub fn reason_code(reason: &impl std::fmt::Debug) -> u8 {
    match format!("{reason:?}").as_str() {
        "Success" => 0x00,
        "NoMatchingSubscribers" => 0x10,
        "UnspecifiedError" => 0x80,
        "ImplementationSpecificError" => 0x83,
        "NotAuthorized" => 0x87,
        "TopicNameInvalid" => 0x90,
        "PacketIdentifierInUse" => 0x91,
        "QuotaExceeded" => 0x97,
        "PayloadFormatInvalid" => 0x99,
        other => panic!("unknown reason {other}"),
    }
}
