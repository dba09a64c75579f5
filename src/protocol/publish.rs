//! PUBLISH and its acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP), which share one shape.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::{properties_len, read_properties, write_properties_in};
use super::wire::{self, Reader};
use super::{
    read_packet_id, read_reason_tail, reason_tail_len, write_reason_tail, DecodeError, PacketId,
    PacketType, Properties, PropertyContext, ProtocolVersion, QoS, ReasonCode, TopicName,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in a 5.0 PUBLISH whose topic comes from a Topic Alias.
    pub topic: TopicName,
    /// Present exactly when `qos` is 1 or 2 [MQTT-2.2.1-2].
    pub packet_id: Option<PacketId>,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0b1000 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        // DUP must be 0 for QoS 0 [MQTT-3.3.1-2].
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::InvalidHeaderFlags {
                packet_type: PacketType::Publish,
                flags,
            });
        }
        let topic = TopicName::new(reader.string()?)?;
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce | QoS::ExactlyOnce => {
                Some(read_packet_id(reader, PacketType::Publish)?)
            }
        };
        let properties = read_properties(reader, version, PropertyContext::Publish)?;
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(if version.is_v5() {
                DecodeError::EmptyTopicWithoutAlias
            } else {
                DecodeError::InvalidTopicName
            });
        }
        Ok(Publish {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload: reader.rest(),
        })
    }

    pub(crate) fn header_flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        wire::field_len(self.topic.as_bytes())
            + if self.packet_id.is_some() { 2 } else { 0 }
            + properties_len(version.is_v5(), &self.properties)
            + self.payload.len()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        debug_assert_eq!(self.packet_id.is_some(), self.qos != QoS::AtMostOnce);
        wire::put_string(buf, &self.topic);
        if let Some(packet_id) = self.packet_id {
            buf.put_u16(packet_id.get());
        }
        write_properties_in(version.is_v5(), &self.properties, PUBLISH_PROPERTY_ORDER, buf);
        buf.put_slice(&self.payload);
    }
}

/// The order Mosquitto writes a PUBLISH's properties in: subscription identifiers, the
/// message's own properties (in the order its publisher sent them; ascending here, as most
/// clients send them), then Message Expiry Interval, counted down. Culex's outgoing Topic
/// Alias (Mosquitto sends none) comes last.
const PUBLISH_PROPERTY_ORDER: &[u8] = &[0x0B, 0x01, 0x03, 0x08, 0x09, 0x26, 0x02, 0x23];

/// Which of the four acknowledgements an [`Ack`] is decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // The spec's packet names.
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet id and, in 5.0, a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: PacketId) -> Self {
        Ack { packet_id, reason: ReasonCode::Success, properties: Properties::default() }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
        kind: AckKind,
    ) -> Result<Self, DecodeError> {
        let packet_type = match kind {
            AckKind::PubAck => PacketType::PubAck,
            AckKind::PubRec => PacketType::PubRec,
            AckKind::PubRel => PacketType::PubRel,
            AckKind::PubComp => PacketType::PubComp,
        };
        let packet_id = read_packet_id(reader, packet_type)?;
        if !version.is_v5() {
            return Ok(Ack::new(packet_id));
        }
        let (context, allowed) = match kind {
            AckKind::PubAck => (PropertyContext::PubAck, PUBLISH_RESPONSE_REASONS),
            AckKind::PubRec => (PropertyContext::PubRec, PUBLISH_RESPONSE_REASONS),
            AckKind::PubRel => (PropertyContext::PubRel, RELEASE_REASONS),
            AckKind::PubComp => (PropertyContext::PubComp, RELEASE_REASONS),
        };
        let (reason, properties) = read_reason_tail(reader, packet_type, context, allowed)?;
        Ok(Ack { packet_id, reason, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() { reason_tail_len(self.reason, &self.properties) } else { 0 }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            write_reason_tail(buf, self.reason, &self.properties);
        }
    }
}

/// Reason codes of PUBACK and PUBREC (MQTT 5.0 sections 3.4.2.1, 3.5.2.1).
pub(super) const PUBLISH_RESPONSE_REASONS: &[ReasonCode] = {
    use ReasonCode::*;
    &[
        Success,
        NoMatchingSubscribers,
        UnspecifiedError,
        ImplementationSpecificError,
        NotAuthorized,
        TopicNameInvalid,
        PacketIdentifierInUse,
        QuotaExceeded,
        PayloadFormatInvalid,
    ]
};

/// Reason codes of PUBREL and PUBCOMP (MQTT 5.0 sections 3.6.2.1, 3.7.2.1).
pub(super) const RELEASE_REASONS: &[ReasonCode] =
    &[ReasonCode::Success, ReasonCode::PacketIdentifierNotFound];
