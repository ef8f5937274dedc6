//! MQTT framing on rumqttc's v4 (3.1.1) and v5 packet types, behind one protocol-neutral set of
//! incoming and outgoing packets, so the connection loop is written once for both versions.
//!
//! The decoder starts versionless, reads the protocol level from the CONNECT frame, and from then
//! on decodes with the matching codec. rumqttc's readers are lenient; what the spec requires of a
//! server beyond them (UTF-8 topics without wildcards, the v5 bare DISCONNECT) is checked here.

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio_util::codec::Decoder;

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// A CONNECT, reduced to what the proxy uses.
#[derive(Debug, Clone)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// The largest packet the client accepts (v5).
    pub max_packet_size: Option<u32>,
    /// Whether the client wants reason strings (v5 Request Problem Information, default true).
    pub problem_info: bool,
    /// The Last Will, published if the connection ends without a normal DISCONNECT.
    pub will: Option<Will>,
    /// MQTT 5 Session Expiry Interval, in seconds (0 for 3.1.1 and when absent: the session ends
    /// with the connection).
    pub session_expiry: u32,
    /// User name and password, when the client sent them.
    pub login: Option<(String, String)>,
    /// MQTT 5 Receive Maximum: how many QoS 1 and 2 messages the client takes unacknowledged
    /// (`None` for 3.1.1 and when absent).
    pub receive_maximum: Option<u16>,
}

/// A Last Will message.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// MQTT 5 Will Delay Interval, in seconds.
    pub delay: u32,
    pub properties: PublishProperties,
}

/// MQTT 5 PUBLISH properties the proxy carries into headers.
#[derive(Debug, Clone, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// Subscription identifiers of the subscriptions a message to a client matched (server to
    /// client only).
    pub subscription_ids: Vec<usize>,
}

/// A PUBLISH from the client.
#[derive(Debug, Clone)]
pub struct Publish {
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    /// Empty when an MQTT 5 client sends only a topic alias.
    pub topic: String,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: String,
    /// The maximum QoS the client asks for.
    pub qos: u8,
    /// MQTT 5 No Local: not sent messages the client published itself.
    pub no_local: bool,
}

/// Packets a client sends.
#[derive(Debug, Clone)]
pub enum Incoming {
    Connect(Connect),
    /// A CONNECT with a protocol level this proxy does not speak.
    UnsupportedProtocol(u8),
    Publish(Publish),
    PubRel(u16),
    /// Acknowledges a QoS 1 PUBLISH the proxy sent; `code` is the MQTT 5 reason code (0 for 3.1.1).
    PubAck {
        pkid: u16,
        code: u8,
    },
    /// Receipt of a QoS 2 PUBLISH the proxy sent.
    PubRec {
        pkid: u16,
        code: u8,
    },
    /// Completes a QoS 2 PUBLISH the proxy sent.
    PubComp(u16),
    PingReq,
    /// A client DISCONNECT; `with_will` for MQTT 5 reason 0x04 (publish the will anyway).
    Disconnect {
        with_will: bool,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<SubscribeFilter>,
        /// MQTT 5 Subscription Identifier.
        id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    /// A packet a client must not send to a server (PUBACK for a message never sent, CONNACK...).
    Unexpected(&'static str),
}

/// Why a frame could not be decoded. Each maps to an MQTT 5 DISCONNECT reason code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("invalid topic name: {0}")]
    TopicInvalid(String),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes client packets, learning the version from the CONNECT.
#[derive(Debug)]
pub struct MqttDecoder {
    version: Option<Version>,
    max_size: usize,
}

impl MqttDecoder {
    /// A decoder that accepts packets of at most `max_size` bytes.
    pub fn new(max_size: u32) -> Self {
        MqttDecoder {
            version: None,
            max_size: max_size as usize,
        }
    }
}

impl Decoder for MqttDecoder {
    type Item = Incoming;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, DecodeError> {
        let Some(version) = self.version else {
            return self.decode_connect(src);
        };
        match version {
            Version::V4 => decode_v4(src, self.max_size),
            Version::V5 => decode_v5(src, self.max_size),
        }
    }
}

impl MqttDecoder {
    fn decode_connect(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, DecodeError> {
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        if first != 0x10 {
            return Err(DecodeError::Protocol(format!(
                "the first packet must be CONNECT, got packet type {}",
                first >> 4
            )));
        }
        let Some((header_len, remaining)) = remaining_length(&src[1..])? else {
            return Ok(None);
        };
        let frame_len = 1 + header_len + remaining;
        if remaining > self.max_size {
            return Err(DecodeError::TooLarge {
                size: frame_len,
                max: self.max_size,
            });
        }
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        // Variable header: protocol name (u16 length + bytes), then the protocol level.
        let body = &src[1 + header_len..frame_len];
        if body.len() < 2 {
            return Err(DecodeError::Malformed("CONNECT too short".into()));
        }
        let name_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let Some(&level) = body.get(2 + name_len) else {
            return Err(DecodeError::Malformed("CONNECT too short".into()));
        };
        match level {
            4 => {
                self.version = Some(Version::V4);
                decode_v4(src, self.max_size)
            }
            5 => {
                self.version = Some(Version::V5);
                decode_v5(src, self.max_size)
            }
            other => {
                src.advance(frame_len);
                Ok(Some(Incoming::UnsupportedProtocol(other)))
            }
        }
    }
}

/// Reads an MQTT variable byte integer: `Some((bytes used, value))`, or `None` if incomplete.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((i + 1, value)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "remaining length longer than 4 bytes".into(),
        ));
    }
    Ok(None)
}

/// Whether `src` holds a whole frame. rumqttc's readers take the frame off the buffer before they
/// parse its body, and report a body that ends early as "insufficient bytes": asked only for whole
/// frames, they can treat every error as a malformed packet instead of waiting for bytes that
/// will never come.
fn whole_frame(src: &mut BytesMut, max: usize) -> Result<bool, DecodeError> {
    if src.len() < 2 {
        return Ok(false);
    }
    let Some((header_len, remaining)) = remaining_length(&src[1..])? else {
        return Ok(false);
    };
    if remaining > max {
        return Err(DecodeError::TooLarge {
            size: 1 + header_len + remaining,
            max,
        });
    }
    let frame_len = 1 + header_len + remaining;
    if src.len() < frame_len {
        src.reserve(frame_len - src.len());
        return Ok(false);
    }
    Ok(true)
}

fn decode_v4(src: &mut BytesMut, max: usize) -> Result<Option<Incoming>, DecodeError> {
    use v4::Packet as P;
    if !whole_frame(src, max)? {
        return Ok(None);
    }
    let packet = match v4::Packet::read(src, max) {
        Ok(p) => p,
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
            return Err(DecodeError::TooLarge { size, max });
        }
        Err(e) => return Err(DecodeError::Malformed(e.to_string())),
    };
    Ok(Some(match packet {
        P::Connect(c) => {
            let will = match c.last_will {
                Some(w) => {
                    check_topic_name(&w.topic)?;
                    Some(Will {
                        topic: w.topic,
                        payload: w.message,
                        qos: w.qos as u8,
                        delay: 0,
                        properties: PublishProperties::default(),
                    })
                }
                None => None,
            };
            Incoming::Connect(Connect {
                version: Version::V4,
                client_id: c.client_id,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                max_packet_size: None,
                problem_info: false,
                will,
                session_expiry: 0,
                login: c.login.map(|l| (l.username, l.password)),
                receive_maximum: None,
            })
        }
        P::Publish(p) => {
            check_topic_name(&p.topic)?;
            Incoming::Publish(Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                retain: p.retain,
                topic: p.topic,
                payload: p.payload,
                properties: PublishProperties::default(),
            })
        }
        P::PubRel(r) => Incoming::PubRel(r.pkid),
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            code: 0,
        },
        P::PubRec(r) => Incoming::PubRec {
            pkid: r.pkid,
            code: 0,
        },
        P::PubComp(c) => Incoming::PubComp(c.pkid),
        P::PingReq => Incoming::PingReq,
        P::Disconnect => Incoming::Disconnect { with_will: false },
        P::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: false,
                })
                .collect(),
            id: None,
        },
        P::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        P::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        P::SubAck(_) => Incoming::Unexpected("SUBACK"),
        P::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        P::PingResp => Incoming::Unexpected("PINGRESP"),
    }))
}

fn decode_v5(src: &mut BytesMut, max: usize) -> Result<Option<Incoming>, DecodeError> {
    use v5::Packet as P;
    if !whole_frame(src, max)? {
        return Ok(None);
    }
    // rumqttc refuses a DISCONNECT with no body or with a reason code but no property length,
    // both of which MQTT 5 allows [MQTT-3.14.2.1].
    if src[0] == 0xE0 && src[1] <= 1 {
        let with_will = src[1] == 1 && src[2] == 0x04;
        src.advance(2 + usize::from(src[1]));
        return Ok(Some(Incoming::Disconnect { with_will }));
    }
    let packet = match v5::Packet::read(src, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
        Ok(p) => p,
        Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
            return Err(DecodeError::TooLarge {
                size: pkt_size,
                max,
            });
        }
        Err(e) => return Err(DecodeError::Malformed(e.to_string())),
    };
    Ok(Some(match packet {
        P::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            let will = match will {
                Some(w) => {
                    let topic = String::from_utf8(w.topic.to_vec()).map_err(|_| {
                        DecodeError::Malformed("will topic is not valid UTF-8".into())
                    })?;
                    check_topic_name(&topic)?;
                    let (delay, properties) = match w.properties {
                        Some(wp) => (
                            wp.delay_interval.unwrap_or(0),
                            PublishProperties {
                                payload_format_indicator: wp.payload_format_indicator,
                                message_expiry_interval: wp.message_expiry_interval,
                                topic_alias: None,
                                response_topic: wp.response_topic,
                                correlation_data: wp.correlation_data,
                                user_properties: wp.user_properties,
                                content_type: wp.content_type,
                                subscription_ids: Vec::new(),
                            },
                        ),
                        None => (0, PublishProperties::default()),
                    };
                    Some(Will {
                        topic,
                        payload: w.message,
                        qos: w.qos as u8,
                        delay,
                        properties,
                    })
                }
                None => None,
            };
            Incoming::Connect(Connect {
                version: Version::V5,
                client_id: c.client_id,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                max_packet_size: props.max_packet_size,
                problem_info: props.request_problem_info != Some(0),
                will,
                session_expiry: props.session_expiry_interval.unwrap_or(0),
                login: login.map(|l| (l.username, l.password)),
                receive_maximum: props.receive_maximum,
            })
        }
        P::Publish(p) => {
            let topic = String::from_utf8(p.topic.to_vec())
                .map_err(|_| DecodeError::Malformed("topic is not valid UTF-8".into()))?;
            let properties = p.properties.map(|pp| PublishProperties {
                payload_format_indicator: pp.payload_format_indicator,
                message_expiry_interval: pp.message_expiry_interval,
                topic_alias: pp.topic_alias,
                response_topic: pp.response_topic,
                correlation_data: pp.correlation_data,
                user_properties: pp.user_properties,
                content_type: pp.content_type,
                subscription_ids: Vec::new(),
            });
            if !topic.is_empty() {
                check_topic_name(&topic)?;
            }
            Incoming::Publish(Publish {
                qos: p.qos as u8,
                pkid: p.pkid,
                retain: p.retain,
                topic,
                payload: p.payload,
                properties: properties.unwrap_or_default(),
            })
        }
        P::PubRel(r) => Incoming::PubRel(r.pkid),
        P::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            code: puback_code(a.reason),
        },
        P::PubRec(r) => Incoming::PubRec {
            pkid: r.pkid,
            code: pubrec_code(r.reason),
        },
        P::PubComp(c) => Incoming::PubComp(c.pkid),
        P::PingReq(_) => Incoming::PingReq,
        P::Disconnect(d) => Incoming::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        P::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            id: s.properties.and_then(|p| p.id),
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                })
                .collect(),
        },
        P::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        P::Auth(_) => Incoming::Unexpected("AUTH (no authentication method was agreed)"),
        P::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        P::SubAck(_) => Incoming::Unexpected("SUBACK"),
        P::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        P::PingResp(_) => Incoming::Unexpected("PINGRESP"),
    }))
}

/// The wire value of a client's PUBACK reason (0x00 success, 0x10 no matching subscribers, 0x80
/// and up a refusal).
fn puback_code(reason: v5::PubAckReason) -> u8 {
    use v5::PubAckReason as R;
    match reason {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// The wire value of a client's PUBREC reason.
fn pubrec_code(reason: v5::PubRecReason) -> u8 {
    use v5::PubRecReason as R;
    match reason {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// A topic name may not hold wildcards or U+0000 [MQTT-3.3.2-2], [MQTT-4.7.3-2].
fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicInvalid(format!(
            "PUBLISH topic {topic:?} contains a wildcard"
        )));
    }
    if topic.contains('\0') {
        return Err(DecodeError::Malformed("topic contains U+0000".into()));
    }
    Ok(())
}

/// The reason codes the proxy sends in PUBACK and PUBREC (MQTT 5 §3.4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// 0x00.
    Success,
    /// 0x10: accepted, but nobody takes it (the message was filtered out on purpose).
    NoMatchingSubscribers,
    /// 0x80: not accepted, reason not otherwise covered (a destination failed).
    UnspecifiedError,
    /// 0x83: valid, but the receiver is not willing to accept it (a plugin rejected it).
    ImplementationSpecificError,
    /// 0x87: the client's identity may not publish to this topic (the ACL).
    NotAuthorized,
    /// 0x90: the topic is well formed but not accepted (no route takes it).
    TopicNameInvalid,
    /// 0x99: the payload does not match its payload format indicator.
    PayloadFormatInvalid,
}

impl AckCode {
    /// Whether the code reports success (below 0x80).
    pub fn is_success(self) -> bool {
        matches!(self, AckCode::Success | AckCode::NoMatchingSubscribers)
    }

    fn puback(self) -> v5::PubAckReason {
        use v5::PubAckReason as R;
        match self {
            AckCode::Success => R::Success,
            AckCode::NoMatchingSubscribers => R::NoMatchingSubscribers,
            AckCode::UnspecifiedError => R::UnspecifiedError,
            AckCode::ImplementationSpecificError => R::ImplementationSpecificError,
            AckCode::NotAuthorized => R::NotAuthorized,
            AckCode::TopicNameInvalid => R::TopicNameInvalid,
            AckCode::PayloadFormatInvalid => R::PayloadFormatInvalid,
        }
    }

    fn pubrec(self) -> v5::PubRecReason {
        use v5::PubRecReason as R;
        match self {
            AckCode::Success => R::Success,
            AckCode::NoMatchingSubscribers => R::NoMatchingSubscribers,
            AckCode::UnspecifiedError => R::UnspecifiedError,
            AckCode::ImplementationSpecificError => R::ImplementationSpecificError,
            AckCode::NotAuthorized => R::NotAuthorized,
            AckCode::TopicNameInvalid => R::TopicNameInvalid,
            AckCode::PayloadFormatInvalid => R::PayloadFormatInvalid,
        }
    }
}

/// What the server tells an MQTT 5 client in CONNACK.
#[derive(Debug, Clone)]
pub struct ConnAckInfo {
    /// Whether the client's session was kept from an earlier connection.
    pub session_present: bool,
    /// MQTT 5: the Session Expiry Interval the server applies, when shorter than the client asked.
    pub session_expiry: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub receive_maximum: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
    /// The keep-alive the client must use instead of its own (MQTT 5 Server Keep Alive).
    pub server_keep_alive: Option<u16>,
}

/// The answer to one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeCode {
    /// Subscribed, at this maximum QoS.
    Granted(u8),
    /// 0x87: the ACL does not let the client subscribe to this filter.
    NotAuthorized,
    /// 0x8F: not a valid topic filter.
    FilterInvalid,
}

/// A PUBLISH to a client.
#[derive(Debug, Clone)]
pub struct OutgoingPublish {
    pub pkid: u16,
    pub qos: u8,
    /// Set when the PUBLISH is sent again.
    pub dup: bool,
    pub topic: String,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// Packets the server sends.
#[derive(Debug, Clone)]
pub enum Outgoing {
    ConnAck(ConnAckInfo),
    /// Refuses a CONNECT: for v4 the 3.1.1 return code, for v5 the reason code.
    ConnRefused(v5::ConnectReturnCode),
    PubAck {
        pkid: u16,
        code: AckCode,
        reason: Option<String>,
    },
    PubRec {
        pkid: u16,
        code: AckCode,
        reason: Option<String>,
    },
    PubComp {
        pkid: u16,
        found: bool,
    },
    PingResp,
    SubAck {
        pkid: u16,
        codes: Vec<SubscribeCode>,
    },
    /// `found[i]`: whether the i-th filter was subscribed.
    UnsubAck {
        pkid: u16,
        found: Vec<bool>,
    },
    Publish(OutgoingPublish),
    /// Releases a QoS 2 PUBLISH the client acknowledged with PUBREC.
    PubRel {
        pkid: u16,
    },
    /// MQTT 5 only: a server DISCONNECT with a reason code.
    Disconnect {
        code: v5::DisconnectReasonCode,
        reason: Option<String>,
    },
}

/// Encodes `packet` for `version` into `dst`. Reason strings are left out when the client asked
/// for no problem information or when they would exceed the client's maximum packet size.
pub fn encode(
    version: Version,
    packet: Outgoing,
    problem_info: bool,
    max_size: Option<u32>,
    dst: &mut BytesMut,
) -> Result<(), String> {
    match version {
        Version::V4 => encode_v4(packet, dst),
        Version::V5 => {
            let with_reason = to_v5(packet.clone(), problem_info);
            if with_reason.write(dst, max_size).is_ok() {
                return Ok(());
            }
            // Too large with the reason string: the spec says to drop it [MQTT-3.4.2-3].
            to_v5(packet, false)
                .write(dst, max_size)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

fn encode_v4(packet: Outgoing, dst: &mut BytesMut) -> Result<(), String> {
    use v4::Packet as P;
    let packet = match packet {
        Outgoing::ConnAck(info) => P::ConnAck(v4::ConnAck::new(
            v4::ConnectReturnCode::Success,
            info.session_present,
        )),
        Outgoing::ConnRefused(code) => {
            use v5::ConnectReturnCode as C;
            let code = match code {
                C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => {
                    v4::ConnectReturnCode::RefusedProtocolVersion
                }
                C::ClientIdentifierNotValid | C::BadClientId => v4::ConnectReturnCode::BadClientId,
                C::BadUserNamePassword => v4::ConnectReturnCode::BadUserNamePassword,
                C::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                _ => v4::ConnectReturnCode::ServiceUnavailable,
            };
            P::ConnAck(v4::ConnAck::new(code, false))
        }
        Outgoing::PubAck { pkid, .. } => P::PubAck(v4::PubAck::new(pkid)),
        Outgoing::PubRec { pkid, .. } => P::PubRec(v4::PubRec::new(pkid)),
        Outgoing::PubComp { pkid, .. } => P::PubComp(v4::PubComp::new(pkid)),
        Outgoing::PingResp => P::PingResp,
        Outgoing::SubAck { pkid, codes } => P::SubAck(v4::SubAck::new(
            pkid,
            codes
                .into_iter()
                .map(|c| match c {
                    SubscribeCode::Granted(q) => v4::SubscribeReasonCode::Success(qos(q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outgoing::UnsubAck { pkid, .. } => P::UnsubAck(v4::UnsubAck::new(pkid)),
        Outgoing::Publish(p) => P::Publish(v4::Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: false,
            topic: p.topic,
            pkid: p.pkid,
            payload: p.payload,
        }),
        Outgoing::PubRel { pkid } => P::PubRel(v4::PubRel::new(pkid)),
        // 3.1.1 has no server DISCONNECT: the connection is just closed.
        Outgoing::Disconnect { .. } => return Ok(()),
    };
    packet
        .write(dst, usize::MAX)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn qos(q: u8) -> rumqttc::mqttbytes::QoS {
    match q {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn to_v5(packet: Outgoing, with_reason: bool) -> v5::Packet {
    use v5::Packet as P;
    let reason = |r: Option<String>| if with_reason { r } else { None };
    match packet {
        Outgoing::ConnAck(info) => P::ConnAck(v5::ConnAck {
            session_present: info.session_present,
            code: v5::ConnectReturnCode::Success,
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: info.session_expiry,
                receive_max: Some(info.receive_maximum),
                max_qos: None,
                // Messages to subscribers come from brokers as they arrive; none is retained.
                retain_available: Some(0),
                max_packet_size: Some(info.max_packet_size),
                assigned_client_identifier: info.assigned_client_id,
                topic_alias_max: Some(info.topic_alias_maximum),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: info.server_keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outgoing::ConnRefused(code) => P::ConnAck(v5::ConnAck {
            session_present: false,
            code,
            properties: None,
        }),
        Outgoing::PubAck {
            pkid,
            code,
            reason: r,
        } => P::PubAck(v5::PubAck {
            pkid,
            reason: code.puback(),
            properties: reason(r).map(|reason_string| v5::PubAckProperties {
                reason_string: Some(reason_string),
                user_properties: Vec::new(),
            }),
        }),
        Outgoing::PubRec {
            pkid,
            code,
            reason: r,
        } => P::PubRec(v5::PubRec {
            pkid,
            reason: code.pubrec(),
            properties: reason(r).map(|reason_string| v5::PubRecProperties {
                reason_string: Some(reason_string),
                user_properties: Vec::new(),
            }),
        }),
        Outgoing::PubComp { pkid, found } => P::PubComp(v5::PubComp {
            pkid,
            reason: if found {
                v5::PubCompReason::Success
            } else {
                v5::PubCompReason::PacketIdentifierNotFound
            },
            properties: None,
        }),
        Outgoing::PingResp => P::PingResp(v5::PingResp),
        Outgoing::SubAck { pkid, codes } => P::SubAck(v5::SubAck {
            pkid,
            return_codes: codes
                .into_iter()
                .map(|c| match c {
                    SubscribeCode::Granted(q) => v5::SubscribeReasonCode::Success(v5_qos(q)),
                    SubscribeCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubscribeCode::FilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect(),
            properties: None,
        }),
        Outgoing::UnsubAck { pkid, found } => P::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: found
                .into_iter()
                .map(|f| {
                    if f {
                        v5::UnsubAckReason::Success
                    } else {
                        v5::UnsubAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
            properties: None,
        }),
        Outgoing::Publish(p) => {
            let props = p.properties;
            let empty = props.payload_format_indicator.is_none()
                && props.message_expiry_interval.is_none()
                && props.response_topic.is_none()
                && props.correlation_data.is_none()
                && props.user_properties.is_empty()
                && props.content_type.is_none()
                && props.subscription_ids.is_empty();
            P::Publish(v5::Publish {
                dup: p.dup,
                qos: v5_qos(p.qos),
                retain: false,
                topic: Bytes::from(p.topic),
                pkid: p.pkid,
                payload: p.payload,
                properties: (!empty).then(|| v5::PublishProperties {
                    payload_format_indicator: props.payload_format_indicator,
                    message_expiry_interval: props.message_expiry_interval,
                    topic_alias: None,
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    user_properties: props.user_properties,
                    subscription_identifiers: props.subscription_ids,
                    content_type: props.content_type,
                }),
            })
        }
        Outgoing::PubRel { pkid } => P::PubRel(v5::PubRel {
            pkid,
            reason: v5::PubRelReason::Success,
            properties: None,
        }),
        Outgoing::Disconnect { code, reason: r } => P::Disconnect(v5::Disconnect {
            reason_code: code,
            // DISCONNECT may carry a reason string whatever Request Problem Information says.
            properties: r.map(|reason_string| v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(reason_string),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Incoming>, DecodeError> {
        let mut decoder = MqttDecoder::new(1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = decoder.decode(&mut buf)? {
            out.push(p);
        }
        Ok(out)
    }

    fn connect_v4() -> Vec<u8> {
        let mut buf = BytesMut::new();
        v4::Packet::Connect(v4::Connect::new("dev1"))
            .write(&mut buf, usize::MAX)
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn detects_the_version_from_connect() {
        let packets = decode_all(&connect_v4()).unwrap();
        assert!(
            matches!(&packets[0], Incoming::Connect(c) if c.version == Version::V4 && c.client_id == "dev1")
        );
    }

    #[test]
    fn unknown_protocol_level() {
        let mut bytes = connect_v4();
        // Byte 8 is the protocol level in a CONNECT with a one-byte remaining length.
        bytes[8] = 7;
        let packets = decode_all(&bytes).unwrap();
        assert!(matches!(packets[0], Incoming::UnsupportedProtocol(7)));
    }

    #[test]
    fn first_packet_must_be_connect() {
        assert!(matches!(
            decode_all(&[0xC0, 0x00]),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn oversize_is_refused_before_it_is_read() {
        // A CONNECT claiming 100 000 bytes, with none of them sent.
        assert!(matches!(
            decode_all(&[0x10, 0xA0, 0x8D, 0x06]),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn wildcard_topic_is_a_protocol_error() {
        let mut bytes = connect_v4();
        let mut buf = BytesMut::new();
        v4::Packet::Publish(v4::Publish::new(
            "a/+/b",
            rumqttc::mqttbytes::QoS::AtMostOnce,
            "x",
        ))
        .write(&mut buf, usize::MAX)
        .unwrap();
        bytes.extend_from_slice(&buf);
        assert!(matches!(
            decode_all(&bytes),
            Err(DecodeError::TopicInvalid(_))
        ));
    }

    #[test]
    fn a_frame_whose_body_ends_early_is_malformed_not_awaited() {
        let mut bytes = connect_v4();
        // PUBLISH QoS 1 whose remaining length (3) ends inside the topic.
        bytes.extend_from_slice(&[0x32, 0x03, 0x00, 0x05, b'a']);
        assert!(matches!(decode_all(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn bare_v5_disconnect() {
        let mut buf = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect {
                keep_alive: 10,
                client_id: "d".into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        )
        .write(&mut buf, None)
        .unwrap();
        buf.extend_from_slice(&[0xE0, 0x00]);
        let packets = decode_all(&buf).unwrap();
        assert!(matches!(
            packets[1],
            Incoming::Disconnect { with_will: false }
        ));
    }
}
