//! The MQTT 3.1, 3.1.1 and 5.0 codec: packets as types, decoded from a read buffer and encoded
//! into a write buffer. Pure: no I/O, no async, no broker state. Decoding never panics, never
//! copies a PUBLISH's topic or payload (they are slices of the read buffer), and allocates only in
//! proportion to a packet whose size was checked against the maximum before it was buffered.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

mod connect;
mod error;
mod properties;
mod publish;
mod reason;
mod session_end;
mod subscribe;
mod topic;
pub mod trie;
mod wire;

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

pub use connect::{ConnAck, Connect, LastWill};
pub use error::DecodeError;
pub use properties::{Properties, PropertyContext, SubscriptionId};
use publish::AckKind;
pub use publish::{Ack, Publish};
pub use reason::{ConnectReturnCode, ReasonCode};
pub use session_end::{Auth, Disconnect};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use topic::{
    filter_matches, SharedFilter, TopicFilter, TopicName, TOPIC_LEN_MAX, TOPIC_LEVELS_MAX,
};

use wire::Reader;

/// The largest packet MQTT can express: a one-byte header, four length bytes, and the body.
pub const PACKET_SIZE_MAX: u32 = 1 + 4 + wire::VARINT_MAX;

/// The protocol level of a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            ProtocolVersion::V311 | ProtocolVersion::V5 => "MQTT",
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQos),
        }
    }
}

/// A packet identifier, never zero where the spec requires one [MQTT-2.2.1-3].
pub type PacketId = NonZeroU16;

fn read_packet_id(reader: &mut Reader, packet_type: PacketType) -> Result<PacketId, DecodeError> {
    PacketId::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId(packet_type))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    fn from_header(byte: u8) -> Result<Self, DecodeError> {
        use PacketType::*;
        Ok(match byte >> 4 {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            reserved => return Err(DecodeError::ReservedPacketType(reserved)),
        })
    }

    /// The fixed header's low nibble, fixed for every type but PUBLISH [MQTT-2.1.3-1].
    fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Where a complete packet lies at the start of a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Fixed header byte, length bytes and body.
    pub total_len: usize,
    /// Length of the fixed header byte and the length bytes.
    pub header_len: usize,
}

/// Finds the packet at the start of `buf` without consuming anything: `Ok(None)` while the
/// length bytes are incomplete, an error as soon as the declared size exceeds `max_packet_size`
/// (so an oversized body is never buffered). The packet may still be incomplete when this
/// returns a frame: compare `total_len` with what is buffered.
pub fn frame(buf: &[u8], max_packet_size: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(length_bytes) = buf.get(1..) else {
        return Ok(None);
    };
    let Some((remaining, len_len)) = wire::decode_varint(length_bytes)? else {
        return Ok(None);
    };
    let header_len = 1 + len_len;
    let total = header_len as u64 + u64::from(remaining);
    if total > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size: total, max: max_packet_size });
    }
    // Invariant: total <= 1 + 4 + 268,435,455, which fits usize on every supported target.
    Ok(Some(Frame { total_len: total as usize, header_len }))
}

impl Packet {
    /// Decodes one packet from the start of `buf` and removes it, or returns `Ok(None)` and leaves
    /// `buf` untouched when the packet is not complete yet. CONNECT is decoded whatever `version`
    /// says: it is the packet that fixes the version.
    pub fn decode(
        buf: &mut BytesMut,
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Result<Option<Packet>, DecodeError> {
        let Some(frame) = frame(buf, max_packet_size)? else {
            return Ok(None);
        };
        if buf.len() < frame.total_len {
            return Ok(None);
        }
        let mut packet = buf.split_to(frame.total_len).freeze();
        let header = packet.split_to(frame.header_len);
        let first = header.first().copied().ok_or(DecodeError::UnexpectedEnd)?;
        Self::decode_body(first, Reader::new(packet), version).map(Some)
    }

    fn decode_body(
        first: u8,
        mut reader: Reader,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let packet_type = PacketType::from_header(first)?;
        let flags = first & 0x0F;
        if packet_type != PacketType::Publish && flags != packet_type.fixed_flags() {
            return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
        }
        let r = &mut reader;
        let packet = match packet_type {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(r)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
            PacketType::Publish => Packet::Publish(Publish::decode(flags, r, version)?),
            PacketType::PubAck => Packet::PubAck(Ack::decode(r, version, AckKind::PubAck)?),
            PacketType::PubRec => Packet::PubRec(Ack::decode(r, version, AckKind::PubRec)?),
            PacketType::PubRel => Packet::PubRel(Ack::decode(r, version, AckKind::PubRel)?),
            PacketType::PubComp => Packet::PubComp(Ack::decode(r, version, AckKind::PubComp)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
            PacketType::Auth if version.is_v5() => Packet::Auth(Auth::decode(r)?),
            PacketType::Auth => return Err(DecodeError::PacketTypeNotInVersion(packet_type)),
        };
        reader.finish()?;
        Ok(packet)
    }

    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    fn header_flags(&self) -> u8 {
        match self {
            Packet::Publish(publish) => publish.header_flags(),
            other => other.packet_type().fixed_flags(),
        }
    }

    fn body_len(&self, version: ProtocolVersion) -> usize {
        match self {
            Packet::Connect(connect) => connect.body_len(),
            Packet::ConnAck(connack) => connack.body_len(version),
            Packet::Publish(publish) => publish.body_len(version),
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => ack.body_len(version),
            Packet::Subscribe(subscribe) => subscribe.body_len(version),
            Packet::SubAck(suback) => suback.body_len(version),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.body_len(version),
            Packet::UnsubAck(unsuback) => unsuback.body_len(version),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(disconnect) => disconnect.body_len(version),
            Packet::Auth(auth) => auth.body_len(),
        }
    }

    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        match self {
            Packet::Connect(connect) => connect.write_body(buf),
            Packet::ConnAck(connack) => connack.write_body(version, buf),
            Packet::Publish(publish) => publish.write_body(version, buf),
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => ack.write_body(version, buf),
            Packet::Subscribe(subscribe) => subscribe.write_body(version, buf),
            Packet::SubAck(suback) => suback.write_body(version, buf),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.write_body(version, buf),
            Packet::UnsubAck(unsuback) => unsuback.write_body(version, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(disconnect) => disconnect.write_body(version, buf),
            Packet::Auth(auth) => auth.write_body(buf),
        }
    }

    /// The packet's full size on the wire, to compare with a peer's Maximum Packet Size before
    /// sending [MQTT-3.1.2-24].
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = self.body_len(version);
        1 + wire::varint_len(body as u32) + body
    }

    /// Appends the packet to `buf`. Packets built from decoded ones or by the broker within its
    /// limits always encode; the body length is checked from this side in debug builds.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let body = self.body_len(version);
        debug_assert!(body <= wire::VARINT_MAX as usize);
        buf.reserve(1 + 4 + body);
        buf.put_u8(((self.packet_type() as u8) << 4) | self.header_flags());
        wire::put_varint(buf, body as u32);
        let start = buf.len();
        self.write_body(version, buf);
        debug_assert_eq!(buf.len() - start, body, "body_len disagrees with write_body");
    }
}

/// Reads the v5 tail shared by PUBACK/PUBREC/PUBREL/PUBCOMP, DISCONNECT and AUTH: a reason code
/// and properties, both omitted when the packet ends first (meaning Success, no properties).
fn read_reason_tail(
    reader: &mut Reader,
    packet_type: PacketType,
    context: PropertyContext,
    allowed: &[ReasonCode],
) -> Result<(ReasonCode, Properties), DecodeError> {
    if reader.is_empty() {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let code = reader.u8()?;
    let reason = ReasonCode::from_u8(code)
        .filter(|reason| allowed.contains(reason))
        .ok_or(DecodeError::InvalidReasonCode { packet_type, code })?;
    let properties = if reader.is_empty() {
        Properties::default()
    } else {
        Properties::decode(reader, context)?
    };
    Ok((reason, properties))
}

fn reason_tail_len(reason: ReasonCode, properties: &Properties) -> usize {
    match (reason, properties.is_empty()) {
        (ReasonCode::Success, true) => 0,
        (_, true) => 1,
        (_, false) => 1 + properties.encoded_len(),
    }
}

fn write_reason_tail(buf: &mut BytesMut, reason: ReasonCode, properties: &Properties) {
    match (reason, properties.is_empty()) {
        (ReasonCode::Success, true) => {}
        (_, true) => buf.put_u8(reason as u8),
        (_, false) => {
            buf.put_u8(reason as u8);
            properties.encode(&[], buf);
        }
    }
}

#[cfg(test)]
mod tests;
