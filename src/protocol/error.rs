//! Why a packet could not be decoded, and the reason code each failure is reported with.

use thiserror::Error;

use super::{PacketType, ReasonCode};

/// Property identifiers whose forbidden values Mosquitto calls malformed.
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const TOPIC_ALIAS: u8 = 0x23;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("variable byte integer longer than four bytes")]
    MalformedVarint,
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("packet type {0} is reserved")]
    ReservedPacketType(u8),
    #[error("packet type {0:?} is not defined in this protocol version")]
    PacketTypeNotInVersion(PacketType),
    #[error("invalid fixed header flags {flags:#06b} for {packet_type:?}")]
    InvalidHeaderFlags { packet_type: PacketType, flags: u8 },
    #[error("packet ends inside a field")]
    UnexpectedEnd,
    #[error("bytes left over after the last field")]
    TrailingBytes,
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("protocol name is not MQTT or MQIsdp")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported")]
    UnsupportedProtocolVersion(u8),
    #[error("CONNECT reserved flag is set")]
    ConnectReservedFlag,
    #[error("will QoS or retain set without the will flag, or will QoS 3")]
    InvalidWillFlags,
    #[error("password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("QoS 3 is not a QoS")]
    InvalidQos,
    #[error("packet identifier 0 in {0:?}")]
    ZeroPacketId(PacketType),
    #[error("topic name is empty or contains a wildcard")]
    InvalidTopicName,
    #[error("topic name has more than {} levels", super::topic::TOPIC_LEVELS_MAX)]
    TopicTooDeep,
    #[error("topic filter has more than {} levels", super::topic::TOPIC_LEVELS_MAX)]
    TopicFilterTooDeep,
    #[error("5.0 PUBLISH with an empty topic and no topic alias")]
    EmptyTopicWithoutAlias,
    #[error("topic filter is empty or misuses a wildcard")]
    InvalidTopicFilter,
    #[error("{0:?} carries no topic filter")]
    NoTopicFilters(PacketType),
    #[error("reserved subscription option bits are set, or retain handling is 3")]
    InvalidSubscriptionOptions,
    #[error("reason code {code:#04x} is not allowed in {packet_type:?}")]
    InvalidReasonCode { packet_type: PacketType, code: u8 },
    #[error("CONNACK flags {0:#04x} set reserved bits")]
    InvalidConnAckFlags(u8),
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {property:#04x} is not allowed in {context}")]
    PropertyNotAllowed { property: u8, context: &'static str },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has a value the spec forbids")]
    InvalidPropertyValue(u8),
}

impl DecodeError {
    /// The reason code a 5.0 peer is told (in DISCONNECT or CONNACK) before the connection closes.
    /// The spec calls a broken encoding "Malformed Packet" and a well-formed packet that breaks a
    /// rule "Protocol Error" (section 4.13); where the line between them is a matter of taste,
    /// the code is Mosquitto's (tests/differential checks every one against it).
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            MalformedVarint
            | PacketTypeNotInVersion(_)
            | InvalidHeaderFlags { .. }
            | UnexpectedEnd
            | TrailingBytes
            | InvalidUtf8
            | NullCharacter
            | ConnectReservedFlag
            | InvalidWillFlags
            | InvalidQos
            | InvalidSubscriptionOptions
            | InvalidReasonCode { .. }
            | InvalidConnAckFlags(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | TopicFilterTooDeep
            | InvalidTopicFilter
            | NoTopicFilters(_)
            | ZeroPacketId(PacketType::Subscribe | PacketType::Unsubscribe)
            | InvalidPropertyValue(SUBSCRIPTION_IDENTIFIER | TOPIC_ALIAS) => {
                ReasonCode::MalformedPacket
            }
            ReservedPacketType(_)
            | InvalidProtocolName
            | PasswordWithoutUsername
            | ZeroPacketId(_)
            | EmptyTopicWithoutAlias
            | InvalidTopicName
            | TopicTooDeep
            | DuplicateProperty(_)
            | InvalidPropertyValue(_) => ReasonCode::ProtocolError,
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
        }
    }
}
