//! MQTT clients for tests: rumqttc for well-behaved publishers, raw packets for everything a
//! well-behaved client would never send.

use std::net::SocketAddr;
use std::time::Duration;

use barnabas_bench::load::reason_code;
use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back for one publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    /// PUBACK (QoS 1) or PUBREC (QoS 2) with its v5 reason code (0 for 3.1.1) and reason string.
    Acked { code: u8, reason: Option<String> },
    /// The connection closed first.
    Closed(String),
    /// Nothing came in time.
    Timeout,
}

/// Publishes once with rumqttc 3.1.1 and waits for the acknowledgement.
pub async fn publish_v4(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    qos: u8,
    payload: &[u8],
) -> Ack {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let qos = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    client
        .publish(topic, qos, false, payload.to_vec())
        .await
        .expect("queue publish");
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_)))
                | Ok(Event::Incoming(Packet::PubComp(_))) => {
                    return Ack::Acked {
                        code: 0,
                        reason: None,
                    };
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                    return Ack::Acked {
                        code: 0,
                        reason: None,
                    };
                }
                Ok(_) => {}
                Err(e) => return Ack::Closed(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or(Ack::Timeout)
}

/// Publishes once with rumqttc 5 and waits for the PUBACK (QoS 1) or PUBREC (QoS 2).
pub async fn publish_v5(
    addr: SocketAddr,
    client_id: &str,
    topic: &str,
    qos: u8,
    payload: &[u8],
    properties: Option<v5::PublishProperties>,
) -> Ack {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let q = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    match properties {
        Some(p) => client
            .publish_with_properties(topic, q, false, payload.to_vec(), p)
            .await
            .expect("queue publish"),
        None => client
            .publish(topic, q, false, payload.to_vec())
            .await
            .expect("queue publish"),
    }
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(v5::Packet::PubAck(a))) => {
                    return Ack::Acked {
                        code: reason_code(&a.reason),
                        reason: a.properties.and_then(|p| p.reason_string),
                    };
                }
                Ok(Event::Incoming(v5::Packet::PubRec(r))) => {
                    return Ack::Acked {
                        code: reason_code(&r.reason),
                        reason: r.properties.and_then(|p| p.reason_string),
                    };
                }
                Ok(_) => {}
                Err(e) => return Ack::Closed(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or(Ack::Timeout)
}

/// A raw connection that writes whatever bytes a test wants and decodes what the server says.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    v5: bool,
}

impl Raw {
    /// Connects without sending anything.
    pub async fn connect(addr: SocketAddr, v5: bool) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
            v5,
        }
    }

    /// Connects and completes CONNECT/CONNACK as `client_id`.
    pub async fn session(addr: SocketAddr, v5: bool, client_id: &str) -> Raw {
        let mut raw = Raw::connect(addr, v5).await;
        if v5 {
            raw.send_v5(v5::Packet::Connect(
                v5::Connect {
                    keep_alive: 30,
                    client_id: client_id.into(),
                    clean_start: true,
                    properties: None,
                },
                None,
                None,
            ))
            .await;
            match raw.recv_v5().await {
                Some(v5::Packet::ConnAck(c)) => assert_eq!(c.code, v5::ConnectReturnCode::Success),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        } else {
            raw.send_v4(v4::Packet::Connect(v4::Connect::new(client_id)))
                .await;
            match raw.recv_v4().await {
                Some(v4::Packet::ConnAck(c)) => assert_eq!(c.code, v4::ConnectReturnCode::Success),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        raw
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes a 3.1.1 packet.
    pub async fn send_v4(&mut self, p: v4::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).expect("encode");
        self.write(&b).await;
    }

    /// Writes a 5 packet.
    pub async fn send_v5(&mut self, p: v5::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).expect("encode");
        self.write(&b).await;
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(15), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// The next 3.1.1 packet, or `None` when the server closed the connection (or 15 s passed).
    pub async fn recv_v4(&mut self) -> Option<v4::Packet> {
        assert!(!self.v5);
        loop {
            match v4::Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("server sent garbage: {e}"),
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next 5 packet, or `None` when the server closed the connection (or 15 s passed).
    pub async fn recv_v5(&mut self) -> Option<v5::Packet> {
        assert!(self.v5);
        loop {
            match v5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("server sent garbage: {e}"),
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The raw bytes the server sends until it closes (or 15 s pass).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill().await {}
        self.buf.to_vec()
    }

    /// Whether the server closed the connection (reads EOF within 15 s).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(15), self.stream.read(&mut chunk)).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A 3.1.1 PUBLISH.
pub fn publish4(topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> v4::Packet {
    let q = match qos {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    };
    let mut p = v4::Publish::new(topic, q, payload.to_vec());
    p.pkid = pkid;
    v4::Packet::Publish(p)
}

/// A 5 PUBLISH.
pub fn publish5(
    topic: &str,
    qos: u8,
    pkid: u16,
    payload: &[u8],
    properties: Option<v5::PublishProperties>,
) -> v5::Packet {
    let q = match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    };
    let mut p = v5::Publish::new(topic, q, payload.to_vec(), properties);
    p.pkid = pkid;
    v5::Packet::Publish(p)
}

/// Runs `mosquitto_pub` with `args`, returning (success, stdout+stderr).
pub async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .output()
        .await
        .expect("mosquitto_pub is not installed: run `make setup`");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
