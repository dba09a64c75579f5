//! MQTT 5.0 properties (section 2.2.2): one table gives each property its identifier, its type and
//! the packets it may appear in; decoding, validation, length and encoding are all derived from
//! it. A decoded `Properties` only holds properties allowed in its packet, each at most once
//! (except user properties, and subscription identifiers in PUBLISH), user properties in order.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::{self, Reader, VARINT_MAX};
use super::{DecodeError, ProtocolVersion, QoS, TopicName};

/// Where a property list appears; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    pub const ALL: [PropertyContext; 14] = {
        use PropertyContext::*;
        [
            Connect,
            ConnAck,
            Publish,
            Will,
            PubAck,
            PubRec,
            PubRel,
            PubComp,
            Subscribe,
            SubAck,
            Unsubscribe,
            UnsubAck,
            Disconnect,
            Auth,
        ]
    };

    pub(super) const fn bit(self) -> u16 {
        1 << self as u16
    }

    fn name(self) -> &'static str {
        use PropertyContext::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            Will => "will properties",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

/// How one property value is read, measured and written. `id` names the property in errors.
trait Value: Sized {
    fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError>;
    fn wire_len(&self) -> usize;
    fn write(&self, buf: &mut BytesMut);
}

impl Value for bool {
    fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn wire_len(&self) -> usize {
        1
    }
    fn write(&self, buf: &mut BytesMut) {
        buf.put_u8(u8::from(*self));
    }
}

/// Maximum QoS is a byte of 0 or 1 [MQTT-3.2.2-9]; QoS 2 is expressed by its absence.
impl Value for QoS {
    fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            _ => Err(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn wire_len(&self) -> usize {
        1
    }
    fn write(&self, buf: &mut BytesMut) {
        debug_assert!(*self != QoS::ExactlyOnce, "Maximum QoS 2 is sent by omitting it");
        buf.put_u8(*self as u8);
    }
}

/// The integer property values: `$int` read and written big-endian in `$len` bytes, and its
/// non-zero form (Receive Maximum, Maximum Packet Size, ...), for which 0 is an invalid value.
macro_rules! integer_values {
    ($($int:ty, $nonzero:ty, $len:expr, $read:ident, $put:ident;)*) => {$(
        impl Value for $int {
            fn read(reader: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
                reader.$read()
            }
            fn wire_len(&self) -> usize {
                $len
            }
            fn write(&self, buf: &mut BytesMut) {
                buf.$put(*self);
            }
        }

        impl Value for $nonzero {
            fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError> {
                <$nonzero>::new(reader.$read()?).ok_or(DecodeError::InvalidPropertyValue(id))
            }
            fn wire_len(&self) -> usize {
                $len
            }
            fn write(&self, buf: &mut BytesMut) {
                buf.$put(self.get());
            }
        }
    )*};
}

integer_values! {
    u16, NonZeroU16, 2, u16, put_u16;
    u32, NonZeroU32, 4, u32, put_u32;
}

impl Value for ByteString {
    fn read(reader: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        reader.string()
    }
    fn wire_len(&self) -> usize {
        wire::field_len(self.as_bytes())
    }
    fn write(&self, buf: &mut BytesMut) {
        wire::put_string(buf, self);
    }
}

/// The Response Topic is a topic name: no wildcards [MQTT-3.3.2-14].
impl Value for TopicName {
    fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        let topic = reader.string()?;
        if topic.is_empty() {
            return Err(DecodeError::InvalidPropertyValue(id));
        }
        TopicName::new(topic)
    }
    fn wire_len(&self) -> usize {
        wire::field_len(self.as_bytes())
    }
    fn write(&self, buf: &mut BytesMut) {
        wire::put_string(buf, self);
    }
}

impl Value for Bytes {
    fn read(reader: &mut Reader, _id: u8) -> Result<Self, DecodeError> {
        reader.binary()
    }
    fn wire_len(&self) -> usize {
        wire::field_len(self)
    }
    fn write(&self, buf: &mut BytesMut) {
        wire::put_binary(buf, self);
    }
}

/// A subscription identifier: a variable byte integer from 1 to 268,435,455 [MQTT-3.8.2.1.2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    pub fn new(id: u32) -> Option<Self> {
        if id > VARINT_MAX {
            return None;
        }
        NonZeroU32::new(id).map(Self)
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl Value for SubscriptionId {
    fn read(reader: &mut Reader, id: u8) -> Result<Self, DecodeError> {
        SubscriptionId::new(reader.varint()?).ok_or(DecodeError::InvalidPropertyValue(id))
    }
    fn wire_len(&self) -> usize {
        wire::varint_len(self.get())
    }
    fn write(&self, buf: &mut BytesMut) {
        wire::put_varint(buf, self.get());
    }
}

const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const USER_PROPERTY: u8 = 0x26;

macro_rules! properties_table {
    ($( $id:literal $field:ident: $ty:ty => $($ctx:ident)|+; )*) => {
        /// All MQTT 5.0 properties of one packet. Absent is `None`; user properties and
        /// subscription identifiers keep their order.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Properties {
            $( pub $field: Option<$ty>, )*
            /// Several only in PUBLISH (one per matching subscription) [MQTT-3.3.4-3].
            pub subscription_identifiers: Vec<SubscriptionId>,
            pub user_properties: Vec<(ByteString, ByteString)>,
        }

        /// The packets each property identifier may appear in, as a mask of context bits.
        pub(super) fn allowed_contexts(id: u8) -> Option<u16> {
            use PropertyContext::*;
            match id {
                $( $id => Some(0 $(| $ctx.bit())+), )*
                SUBSCRIPTION_IDENTIFIER => Some(Publish.bit() | Subscribe.bit()),
                USER_PROPERTY => Some(
                    Connect.bit() | ConnAck.bit() | Publish.bit() | Will.bit() | PubAck.bit()
                    | PubRec.bit() | PubRel.bit() | PubComp.bit() | Subscribe.bit()
                    | SubAck.bit() | Unsubscribe.bit() | UnsubAck.bit() | Disconnect.bit()
                    | Auth.bit(),
                ),
                _ => None,
            }
        }

        impl Properties {
            fn read_one(
                &mut self,
                id: u8,
                context: PropertyContext,
                reader: &mut Reader,
            ) -> Result<(), DecodeError> {
                match id {
                    $( $id => {
                        if self.$field.is_some() {
                            return Err(DecodeError::DuplicateProperty(id));
                        }
                        self.$field = Some(<$ty as Value>::read(reader, id)?);
                    } )*
                    SUBSCRIPTION_IDENTIFIER => {
                        if context != PropertyContext::Publish
                            && !self.subscription_identifiers.is_empty()
                        {
                            return Err(DecodeError::DuplicateProperty(id));
                        }
                        let sub_id = SubscriptionId::read(reader, id)?;
                        self.subscription_identifiers.push(sub_id);
                    }
                    USER_PROPERTY => {
                        let key = reader.string()?;
                        let value = reader.string()?;
                        self.user_properties.push((key, value));
                    }
                    _ => return Err(DecodeError::UnknownProperty(id)),
                }
                Ok(())
            }

            fn body_len(&self) -> usize {
                let mut len = 0;
                $( if let Some(value) = &self.$field {
                    len += 1 + value.wire_len();
                } )*
                for sub_id in &self.subscription_identifiers {
                    len += 1 + sub_id.wire_len();
                }
                for (key, value) in &self.user_properties {
                    len += 1 + wire::field_len(key.as_bytes()) + wire::field_len(value.as_bytes());
                }
                len
            }

            /// Writes the property `id` if present; every one of a repeatable property.
            fn write_one(&self, id: u8, buf: &mut BytesMut) {
                match id {
                    $( $id => if let Some(value) = &self.$field {
                        buf.put_u8($id);
                        value.write(buf);
                    }, )*
                    SUBSCRIPTION_IDENTIFIER => for sub_id in &self.subscription_identifiers {
                        buf.put_u8(SUBSCRIPTION_IDENTIFIER);
                        sub_id.write(buf);
                    },
                    USER_PROPERTY => for (key, value) in &self.user_properties {
                        buf.put_u8(USER_PROPERTY);
                        wire::put_string(buf, key);
                        wire::put_string(buf, value);
                    },
                    _ => {}
                }
            }

            /// The properties in `first`'s order, then the others by identifier, then the
            /// repeatable ones not in `first`.
            fn write_body(&self, first: &[u8], buf: &mut BytesMut) {
                let rest = [$($id),*].into_iter().chain([SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
                for id in first.iter().copied().chain(rest.filter(|id| !first.contains(id))) {
                    self.write_one(id, buf);
                }
            }

            /// Identifiers of the properties present, for checking them against a context.
            fn present_ids(&self) -> impl Iterator<Item = u8> + '_ {
                [$( self.$field.is_some().then_some($id), )*]
                    .into_iter()
                    .flatten()
                    .chain((!self.subscription_identifiers.is_empty())
                        .then_some(SUBSCRIPTION_IDENTIFIER))
                    .chain((!self.user_properties.is_empty()).then_some(USER_PROPERTY))
            }
        }
    };
}

properties_table! {
    0x01 payload_format_indicator: bool => Publish | Will;
    0x02 message_expiry_interval: u32 => Publish | Will;
    0x03 content_type: ByteString => Publish | Will;
    0x08 response_topic: TopicName => Publish | Will;
    0x09 correlation_data: Bytes => Publish | Will;
    0x11 session_expiry_interval: u32 => Connect | ConnAck | Disconnect;
    0x12 assigned_client_identifier: ByteString => ConnAck;
    0x13 server_keep_alive: u16 => ConnAck;
    0x15 authentication_method: ByteString => Connect | ConnAck | Auth;
    0x16 authentication_data: Bytes => Connect | ConnAck | Auth;
    0x17 request_problem_information: bool => Connect;
    0x18 will_delay_interval: u32 => Will;
    0x19 request_response_information: bool => Connect;
    0x1A response_information: ByteString => ConnAck;
    0x1C server_reference: ByteString => ConnAck | Disconnect;
    0x1F reason_string: ByteString => ConnAck | PubAck | PubRec | PubRel | PubComp | SubAck
        | UnsubAck | Disconnect | Auth;
    0x21 receive_maximum: NonZeroU16 => Connect | ConnAck;
    0x22 topic_alias_maximum: u16 => Connect | ConnAck;
    0x23 topic_alias: NonZeroU16 => Publish;
    0x24 maximum_qos: QoS => ConnAck;
    0x25 retain_available: bool => ConnAck;
    0x27 maximum_packet_size: NonZeroU32 => Connect | ConnAck;
    0x28 wildcard_subscription_available: bool => ConnAck;
    0x29 subscription_identifier_available: bool => ConnAck;
    0x2A shared_subscription_available: bool => ConnAck;
}

impl Properties {
    /// Reads a property length and that many bytes of properties allowed in `context`.
    pub(crate) fn decode(
        reader: &mut Reader,
        context: PropertyContext,
    ) -> Result<Self, DecodeError> {
        let len = reader.varint()?;
        // Invariant: a variable byte integer is at most 268,435,455, which fits usize.
        let mut body = Reader::new(reader.take(len as usize)?);
        let mut properties = Properties::default();
        while !body.is_empty() {
            // Identifiers are variable byte integers [MQTT-2.2.2-2]; every defined one is < 128.
            let id =
                u8::try_from(body.varint()?).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            let allowed = allowed_contexts(id).ok_or(DecodeError::UnknownProperty(id))?;
            if allowed & context.bit() == 0 {
                return Err(DecodeError::PropertyNotAllowed {
                    property: id,
                    context: context.name(),
                });
            }
            properties.read_one(id, context, &mut body)?;
        }
        Ok(properties)
    }

    /// Length on the wire: the property length prefix and the properties.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        wire::varint_len(body as u32) + body
    }

    /// Writes the properties, those named in `first` first and in its order (to build a
    /// packet exactly as Mosquitto does), the rest by identifier.
    pub(crate) fn encode(&self, first: &[u8], buf: &mut BytesMut) {
        let body = self.body_len();
        wire::put_varint(buf, body as u32);
        self.write_body(first, buf);
    }

    /// Whether every property present may appear in `context`: what the broker builds it checks
    /// from this side before encoding, as the decoder checks what peers send.
    pub fn fits(&self, context: PropertyContext) -> bool {
        self.present_ids()
            .all(|id| allowed_contexts(id).is_some_and(|mask| mask & context.bit() != 0))
    }

    pub fn is_empty(&self) -> bool {
        self.present_ids().next().is_none()
    }
}

/// Properties exist only in 5.0; a 3.x packet has none on the wire.
pub(crate) fn read_properties(
    reader: &mut Reader,
    version: ProtocolVersion,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        Properties::decode(reader, context)
    } else {
        Ok(Properties::default())
    }
}

pub(crate) fn properties_len(v5: bool, properties: &Properties) -> usize {
    if v5 {
        properties.encoded_len()
    } else {
        0
    }
}

pub(crate) fn write_properties(v5: bool, properties: &Properties, buf: &mut BytesMut) {
    write_properties_in(v5, properties, &[], buf);
}

/// As `write_properties`, those named in `first` first, in its order.
pub(crate) fn write_properties_in(
    v5: bool,
    properties: &Properties,
    first: &[u8],
    buf: &mut BytesMut,
) {
    if v5 {
        properties.encode(first, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &'static [u8], context: PropertyContext) -> Result<Properties, DecodeError> {
        Properties::decode(&mut Reader::new(Bytes::from_static(bytes)), context)
    }

    #[test]
    fn decodes_and_keeps_user_property_order() {
        let props = decode(
            b"\x13\x26\x00\x01b\x00\x012\x26\x00\x01a\x00\x011\x02\x00\x00\x00\x3c",
            PropertyContext::Publish,
        )
        .unwrap();
        assert_eq!(props.message_expiry_interval, Some(60));
        let keys: Vec<&str> = props.user_properties.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn refuses_duplicates_unknowns_and_misplaced() {
        assert_eq!(
            decode(b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01", PropertyContext::Publish),
            Err(DecodeError::DuplicateProperty(0x02))
        );
        assert_eq!(
            decode(b"\x01\x05", PropertyContext::Publish),
            Err(DecodeError::UnknownProperty(5))
        );
        assert_eq!(
            decode(b"\x03\x21\x00\x0a", PropertyContext::Publish),
            Err(DecodeError::PropertyNotAllowed { property: 0x21, context: "PUBLISH" })
        );
    }

    #[test]
    fn subscription_identifiers_repeat_only_in_publish() {
        let props = decode(b"\x04\x0b\x01\x0b\x02", PropertyContext::Publish).unwrap();
        assert_eq!(props.subscription_identifiers.len(), 2);
        assert_eq!(
            decode(b"\x04\x0b\x01\x0b\x02", PropertyContext::Subscribe),
            Err(DecodeError::DuplicateProperty(0x0B))
        );
        assert_eq!(
            decode(b"\x02\x0b\x00", PropertyContext::Subscribe),
            Err(DecodeError::InvalidPropertyValue(0x0B))
        );
    }

    #[test]
    fn values_the_spec_forbids() {
        use PropertyContext::*;
        // Receive Maximum 0, Maximum Packet Size 0, Payload Format 2, Maximum QoS 2, Topic Alias 0.
        for (bytes, context, id) in [
            (&b"\x03\x21\x00\x00"[..], Connect, 0x21),
            (&b"\x05\x27\x00\x00\x00\x00"[..], Connect, 0x27),
            (&b"\x02\x01\x02"[..], Publish, 0x01),
            (&b"\x02\x24\x02"[..], ConnAck, 0x24),
            (&b"\x03\x23\x00\x00"[..], Publish, 0x23),
        ] {
            let mut reader = Reader::new(Bytes::copy_from_slice(bytes));
            assert_eq!(
                Properties::decode(&mut reader, context),
                Err(DecodeError::InvalidPropertyValue(id))
            );
        }
    }

    #[test]
    fn a_property_list_longer_than_its_packet_is_incomplete_data() {
        assert_eq!(
            decode(b"\x05\x01\x01", PropertyContext::Publish),
            Err(DecodeError::UnexpectedEnd)
        );
    }
}
