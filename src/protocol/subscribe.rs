//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use bytes::{BufMut, BytesMut};

use super::properties::{properties_len, read_properties, write_properties};
use super::wire::{self, Reader};
use super::{
    read_packet_id, DecodeError, PacketId, PacketType, Properties, PropertyContext,
    ProtocolVersion, QoS, ReasonCode, TopicFilter,
};

/// What to do with retained messages when subscribing (5.0 only; 3.x always sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe = 0,
    SendAtSubscribeIfNew = 1,
    DoNotSend = 2,
}

/// Subscription options; in 3.x only `qos` exists and the rest keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let reserved = if version.is_v5() { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_u8(byte & 0b11)?,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub properties: Properties,
    /// At least one [MQTT-3.8.3-2].
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(reader, PacketType::Subscribe)?;
        let properties = read_properties(reader, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while !reader.is_empty() {
            let filter = TopicFilter::new(reader.string()?)?;
            let options = SubscriptionOptions::decode(reader.u8()?, version)?;
            filters.push((filter, options));
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Subscribe));
        }
        Ok(Subscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + properties_len(version.is_v5(), &self.properties)
            + self.filters.iter().map(|(f, _)| wire::field_len(f.as_bytes()) + 1).sum::<usize>()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        write_properties(version.is_v5(), &self.properties, buf);
        for (filter, options) in &self.filters {
            wire::put_string(buf, filter);
            buf.put_u8(options.encode(version));
        }
    }
}

/// SUBACK: one reason code per filter, in order. 3.x can only say "granted QoS n" or "failure";
/// every error code is sent to a 3.x client as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

/// Reason codes a 5.0 SUBACK may carry (section 3.9.3).
pub(super) const SUBACK_REASONS: &[ReasonCode] = {
    use ReasonCode::*;
    &[
        Success,
        GrantedQos1,
        GrantedQos2,
        UnspecifiedError,
        ImplementationSpecificError,
        NotAuthorized,
        TopicFilterInvalid,
        PacketIdentifierInUse,
        QuotaExceeded,
        SharedSubscriptionsNotSupported,
        SubscriptionIdentifiersNotSupported,
        WildcardSubscriptionsNotSupported,
    ]
};

/// Reason codes a 5.0 UNSUBACK may carry (section 3.11.3).
pub(super) const UNSUBACK_REASONS: &[ReasonCode] = {
    use ReasonCode::*;
    &[
        Success,
        NoSubscriptionExisted,
        UnspecifiedError,
        ImplementationSpecificError,
        NotAuthorized,
        TopicFilterInvalid,
        PacketIdentifierInUse,
    ]
};

impl SubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(reader, PacketType::SubAck)?;
        let properties = read_properties(reader, version, PropertyContext::SubAck)?;
        let reasons = read_reasons(reader, PacketType::SubAck, |code| {
            if version.is_v5() {
                ReasonCode::from_u8(code).filter(|r| SUBACK_REASONS.contains(r))
            } else {
                match code {
                    0 => Some(ReasonCode::Success),
                    1 => Some(ReasonCode::GrantedQos1),
                    2 => Some(ReasonCode::GrantedQos2),
                    0x80 => Some(ReasonCode::UnspecifiedError),
                    _ => None,
                }
            }
        })?;
        if reasons.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::SubAck));
        }
        Ok(SubAck { packet_id, properties, reasons })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + properties_len(version.is_v5(), &self.properties) + self.reasons.len()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        write_properties(version.is_v5(), &self.properties, buf);
        for reason in &self.reasons {
            let code = if version.is_v5() || !reason.is_error() {
                *reason as u8
            } else {
                ReasonCode::UnspecifiedError as u8
            };
            buf.put_u8(code);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub properties: Properties,
    /// At least one [MQTT-3.10.3-2].
    pub filters: Vec<TopicFilter>,
}

impl Unsubscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(reader, PacketType::Unsubscribe)?;
        let properties = read_properties(reader, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while !reader.is_empty() {
            filters.push(TopicFilter::new(reader.string()?)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + properties_len(version.is_v5(), &self.properties)
            + self.filters.iter().map(|f| wire::field_len(f.as_bytes())).sum::<usize>()
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        write_properties(version.is_v5(), &self.properties, buf);
        for filter in &self.filters {
            wire::put_string(buf, filter);
        }
    }
}

/// UNSUBACK: in 3.x only the packet id (`reasons` is empty); in 5.0 one reason per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub properties: Properties,
    pub reasons: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = read_packet_id(reader, PacketType::UnsubAck)?;
        if !version.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                properties: Properties::default(),
                reasons: Vec::new(),
            });
        }
        let properties = Properties::decode(reader, PropertyContext::UnsubAck)?;
        let reasons = read_reasons(reader, PacketType::UnsubAck, |code| {
            ReasonCode::from_u8(code).filter(|r| UNSUBACK_REASONS.contains(r))
        })?;
        if reasons.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::UnsubAck));
        }
        Ok(UnsubAck { packet_id, properties, reasons })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + if version.is_v5() { self.properties.encoded_len() + self.reasons.len() } else { 0 }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.encode(&[], buf);
            for reason in &self.reasons {
                buf.put_u8(*reason as u8);
            }
        }
    }
}

/// Reads reason codes to the end of the packet, each checked by `accept`.
fn read_reasons(
    reader: &mut Reader,
    packet_type: PacketType,
    accept: impl Fn(u8) -> Option<ReasonCode>,
) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut reasons = Vec::with_capacity(reader.remaining());
    while !reader.is_empty() {
        let code = reader.u8()?;
        reasons.push(accept(code).ok_or(DecodeError::InvalidReasonCode { packet_type, code })?);
    }
    Ok(reasons)
}
