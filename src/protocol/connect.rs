//! CONNECT and CONNACK: the handshake that fixes a connection's protocol version.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::properties::{properties_len, read_properties, write_properties, write_properties_in};
use super::wire::{self, Reader};
use super::{
    ConnectReturnCode, DecodeError, PacketType, Properties, PropertyContext, ProtocolVersion, QoS,
    ReasonCode, TopicName,
};

/// Mosquitto's bridges set this bit of the protocol level (`try_private`) to tell the broker the
/// client is a bridge: 131 for 3.1, 132 for 3.1.1.
const BRIDGE_BIT: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// The protocol level carried Mosquitto's bridge bit.
    pub bridge: bool,
    /// "Clean Session" in 3.x, "Clean Start" in 5.0.
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub properties: Properties,
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0 only).
    pub properties: Properties,
}

mod flag {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

impl Connect {
    /// The plainest CONNECT of `protocol`: clean start, keep alive 60 s, no will, no
    /// credentials, no properties.
    pub fn new(protocol: ProtocolVersion, client_id: &str) -> Connect {
        Connect {
            protocol,
            bridge: false,
            clean_start: true,
            keep_alive_secs: 60,
            properties: Properties::default(),
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub(crate) fn decode(reader: &mut Reader) -> Result<Self, DecodeError> {
        let name = reader.string()?;
        let raw_level = reader.u8()?;
        let level = raw_level & !BRIDGE_BIT;
        let protocol = match (&*name, level) {
            ("MQIsdp", 3) => ProtocolVersion::V31,
            ("MQTT", 4) => ProtocolVersion::V311,
            ("MQTT", 5) => ProtocolVersion::V5,
            ("MQIsdp" | "MQTT", _) => {
                return Err(DecodeError::UnsupportedProtocolVersion(raw_level))
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = reader.u8()?;
        // MQTT 3.1 predates the flag rules 3.1.1 wrote down [MQTT-3.1.2-3, -11, -13]: its
        // clients' stray reserved and will bits, and a user name or password flagged but not
        // sent, are ignored, as Mosquitto ignores them.
        let lenient = protocol == ProtocolVersion::V31;
        if flags & flag::RESERVED != 0 && !lenient {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let has_will = flags & flag::WILL != 0;
        let will_qos = QoS::from_u8((flags >> flag::WILL_QOS_SHIFT) & 0b11)
            .map_err(|_| DecodeError::InvalidWillFlags)?;
        let will_retain = flags & flag::WILL_RETAIN != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) && !lenient {
            return Err(DecodeError::InvalidWillFlags);
        }
        let has_username = flags & flag::USERNAME != 0;
        let has_password = flags & flag::PASSWORD != 0;
        if protocol != ProtocolVersion::V5 && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive_secs = reader.u16()?;
        let properties = read_properties(reader, protocol, PropertyContext::Connect)?;
        let client_id = reader.string()?;
        let will = if has_will {
            let properties = read_properties(reader, protocol, PropertyContext::Will)?;
            let topic = reader.string()?;
            if topic.is_empty() {
                return Err(DecodeError::InvalidTopicName);
            }
            let topic = TopicName::new(topic)?;
            let payload = reader.binary()?;
            Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let sent = |flagged: bool, reader: &Reader| flagged && !(lenient && reader.is_empty());
        let username = sent(has_username, reader).then(|| reader.string()).transpose()?;
        let password = sent(has_password, reader).then(|| reader.binary()).transpose()?;
        Ok(Connect {
            protocol,
            bridge: raw_level & BRIDGE_BIT != 0,
            clean_start: flags & flag::CLEAN_START != 0,
            keep_alive_secs,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.clean_start {
            flags |= flag::CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= flag::WILL | ((will.qos as u8) << flag::WILL_QOS_SHIFT);
            if will.retain {
                flags |= flag::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= flag::USERNAME;
        }
        if self.password.is_some() {
            flags |= flag::PASSWORD;
        }
        flags
    }

    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let mut len = wire::field_len(self.protocol.protocol_name().as_bytes()) + 1 + 1 + 2;
        len += properties_len(v5, &self.properties);
        len += wire::field_len(self.client_id.as_bytes());
        if let Some(will) = &self.will {
            len += properties_len(v5, &will.properties);
            len += wire::field_len(will.topic.as_bytes()) + wire::field_len(&will.payload);
        }
        len += self.username.as_ref().map_or(0, |u| wire::field_len(u.as_bytes()));
        len += self.password.as_ref().map_or(0, |p| wire::field_len(p));
        len
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        wire::put_string(buf, self.protocol.protocol_name());
        let level = self.protocol.level() | if self.bridge { BRIDGE_BIT } else { 0 };
        buf.put_u8(level);
        buf.put_u8(self.flags());
        buf.put_u16(self.keep_alive_secs);
        write_properties(v5, &self.properties, buf);
        wire::put_string(buf, &self.client_id);
        if let Some(will) = &self.will {
            write_properties(v5, &will.properties, buf);
            wire::put_string(buf, &will.topic);
            wire::put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            wire::put_string(buf, username);
        }
        if let Some(password) = &self.password {
            wire::put_binary(buf, password);
        }
    }
}

/// CONNACK. `reason` is the 5.0 reason code; for 3.x it is carried as the nearest return code
/// (see [`ReasonCode::connect_return_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// Reason codes a 5.0 CONNACK may carry (MQTT 5.0 section 3.2.2.2).
pub(super) const CONNACK_REASONS: &[ReasonCode] = {
    use ReasonCode::*;
    &[
        Success,
        UnspecifiedError,
        MalformedPacket,
        ProtocolError,
        ImplementationSpecificError,
        UnsupportedProtocolVersion,
        ClientIdentifierNotValid,
        BadUserNameOrPassword,
        NotAuthorized,
        ServerUnavailable,
        ServerBusy,
        Banned,
        BadAuthenticationMethod,
        TopicNameInvalid,
        PacketTooLarge,
        QuotaExceeded,
        PayloadFormatInvalid,
        RetainNotSupported,
        QosNotSupported,
        UseAnotherServer,
        ServerMoved,
        ConnectionRateExceeded,
    ]
};

impl ConnAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let flags = reader.u8()?;
        if flags & !1 != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = reader.u8()?;
        let invalid = DecodeError::InvalidReasonCode { packet_type: PacketType::ConnAck, code };
        let reason = if version.is_v5() {
            ReasonCode::from_u8(code).filter(|r| CONNACK_REASONS.contains(r)).ok_or(invalid)?
        } else {
            ConnectReturnCode::from_u8(code).ok_or(invalid)?.reason_code()
        };
        let properties = read_properties(reader, version, PropertyContext::ConnAck)?;
        Ok(ConnAck { session_present: flags & 1 != 0, reason, properties })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> usize {
        2 + properties_len(version.is_v5(), &self.properties)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u8(u8::from(self.session_present));
        let code = if version.is_v5() {
            self.reason as u8
        } else {
            self.reason.connect_return_code() as u8
        };
        buf.put_u8(code);
        write_properties_in(version.is_v5(), &self.properties, CONNACK_PROPERTY_ORDER, buf);
    }
}

/// The order Mosquitto 2.0 writes a CONNACK's properties in (its CONNECT handler adds Topic
/// Alias Maximum, Server Keep Alive, Assigned Client Identifier and authentication; sending adds
/// Retain Available, Maximum Packet Size, Receive Maximum and Maximum QoS): tools that compare
/// its packets byte for byte see the same bytes from Culex.
const CONNACK_PROPERTY_ORDER: &[u8] = &[0x22, 0x13, 0x12, 0x15, 0x16, 0x25, 0x27, 0x21, 0x24];

impl ConnectReturnCode {
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectReturnCode::Accepted => ReasonCode::Success,
            ConnectReturnCode::UnacceptableProtocolVersion => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ConnectReturnCode::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            ConnectReturnCode::ServerUnavailable => ReasonCode::ServerUnavailable,
            ConnectReturnCode::BadUserNameOrPassword => ReasonCode::BadUserNameOrPassword,
            ConnectReturnCode::NotAuthorized => ReasonCode::NotAuthorized,
        }
    }
}
