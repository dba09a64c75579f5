//! Codec tests across modules: byte-exact vectors, a table of malformed packets with their exact
//! errors, and property tests (round trip per version, every prefix incomplete, arbitrary bytes).

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::prelude::*;

use super::connect::CONNACK_REASONS;
use super::properties::allowed_contexts;
use super::publish::{PUBLISH_RESPONSE_REASONS, RELEASE_REASONS};
use super::session_end::{AUTH_REASONS, DISCONNECT_REASONS};
use super::subscribe::{SUBACK_REASONS, UNSUBACK_REASONS};
use super::*;

const MAX: u32 = PACKET_SIZE_MAX;
use ProtocolVersion::{V31, V311, V5};

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = Packet::decode(&mut buf, version, MAX)?;
    if packet.is_some() {
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    }
    Ok(packet)
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf);
    assert_eq!(buf.len(), packet.encoded_len(version));
    buf.to_vec()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn topic(s: &'static str) -> TopicName {
    TopicName::new(s).unwrap()
}

// ---- Byte-exact vectors ---------------------------------------------------------------------

/// The CONNECT variable header example of MQTT 3.1.1 (section 3.1.2.10) and 5.0 (3.1.2.11.9):
/// flags 0xCE (user name, password, will QoS 1, will, clean start), keep alive 10; in 5.0 a
/// Session Expiry Interval of 10. The payload is ours: client id "c", will "w" -> "x", "u", "p".
#[test]
fn connect_examples_from_the_spec() {
    let v311: &[u8] =
        b"\x10\x19\x00\x04MQTT\x04\xce\x00\x0a\x00\x01c\x00\x01w\x00\x01x\x00\x01u\x00\x01p";
    let expected = Connect {
        protocol: V311,
        bridge: false,
        clean_start: true,
        keep_alive_secs: 10,
        properties: Properties::default(),
        client_id: "c".into(),
        will: Some(LastWill {
            topic: topic("w"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
    };
    assert_eq!(decode_all(v311, V311).unwrap(), Some(Packet::Connect(Box::new(expected.clone()))));
    assert_eq!(encode(&Packet::Connect(Box::new(expected.clone())), V311), v311);

    let v5: &[u8] =
        b"\x10\x20\x00\x04MQTT\x05\xce\x00\x0a\x05\x11\x00\x00\x00\x0a\x00\x01c\x00\x00\x01w\x00\x01x\x00\x01u\x00\x01p";
    let mut expected5 = expected;
    expected5.protocol = V5;
    expected5.properties.session_expiry_interval = Some(10);
    // Decoding ignores the connection's version: CONNECT fixes it.
    assert_eq!(decode_all(v5, V311).unwrap(), Some(Packet::Connect(Box::new(expected5.clone()))));
    assert_eq!(encode(&Packet::Connect(Box::new(expected5)), V5), v5);
}

/// What `mosquitto_pub -V mqttv31` and Mosquitto's bridges (try_private, level 0x84) send.
#[test]
fn connect_v31_and_bridge_bit() {
    let v31: &[u8] = b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03pub";
    let Some(Packet::Connect(connect)) = decode_all(v31, V311).unwrap() else { panic!() };
    assert_eq!((connect.protocol, connect.bridge, &*connect.client_id), (V31, false, "pub"));
    assert_eq!(encode(&Packet::Connect(connect), V31), v31);

    let bridge: &[u8] = b"\x10\x0f\x00\x04MQTT\x84\x02\x00\x3c\x00\x03brg";
    let Some(Packet::Connect(connect)) = decode_all(bridge, V311).unwrap() else { panic!() };
    assert_eq!((connect.protocol, connect.bridge), (V311, true));
    assert_eq!(encode(&Packet::Connect(connect), V311), bridge);
}

/// MQTT 3.1.1 section 3.3.2.3's PUBLISH example: topic "a/b", packet identifier 10.
#[test]
fn publish_example_from_the_spec() {
    let bytes: &[u8] = b"\x32\x0a\x00\x03a/b\x00\x0ahi!";
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic("a/b"),
        packet_id: Some(pid(10)),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi!"),
    };
    assert_eq!(decode_all(bytes, V311).unwrap(), Some(Packet::Publish(publish.clone())));
    assert_eq!(encode(&Packet::Publish(publish), V311), bytes);
}

#[test]
fn small_packets_byte_for_byte() {
    let ack = |n| Ack::new(pid(n));
    let cases: Vec<(ProtocolVersion, &[u8], Packet)> = vec![
        (V311, b"\xc0\x00", Packet::PingReq),
        (V311, b"\xd0\x00", Packet::PingResp),
        (V311, b"\xe0\x00", Packet::Disconnect(Disconnect::default())),
        (V5, b"\xe0\x00", Packet::Disconnect(Disconnect::default())),
        (V5, b"\xe0\x01\x8e", Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))),
        (
            V311,
            b"\x20\x02\x01\x00",
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ReasonCode::Success,
                properties: Properties::default(),
            }),
        ),
        (
            V311,
            b"\x20\x02\x00\x05",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::NotAuthorized,
                properties: Properties::default(),
            }),
        ),
        (
            V5,
            b"\x20\x03\x00\x87\x00",
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason: ReasonCode::NotAuthorized,
                properties: Properties::default(),
            }),
        ),
        (V311, b"\x40\x02\x00\x07", Packet::PubAck(ack(7))),
        (V5, b"\x40\x02\x00\x07", Packet::PubAck(ack(7))),
        (V311, b"\x50\x02\x00\x07", Packet::PubRec(ack(7))),
        (V311, b"\x62\x02\x00\x07", Packet::PubRel(ack(7))),
        (V311, b"\x70\x02\x00\x07", Packet::PubComp(ack(7))),
        (
            V5,
            b"\x70\x03\x00\x07\x92",
            Packet::PubComp(Ack {
                packet_id: pid(7),
                reason: ReasonCode::PacketIdentifierNotFound,
                properties: Properties::default(),
            }),
        ),
        (
            V311,
            b"\x82\x08\x00\x01\x00\x03a/#\x01",
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                properties: Properties::default(),
                filters: vec![(
                    TopicFilter::new("a/#").unwrap(),
                    SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
                )],
            }),
        ),
        (
            V311,
            b"\x90\x04\x00\x01\x01\x80",
            Packet::SubAck(SubAck {
                packet_id: pid(1),
                properties: Properties::default(),
                reasons: vec![ReasonCode::GrantedQos1, ReasonCode::UnspecifiedError],
            }),
        ),
        (
            V311,
            b"\xa2\x05\x00\x02\x00\x01a",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(2),
                properties: Properties::default(),
                filters: vec![TopicFilter::new("a").unwrap()],
            }),
        ),
        (
            V311,
            b"\xb0\x02\x00\x02",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(2),
                properties: Properties::default(),
                reasons: vec![],
            }),
        ),
        (
            V5,
            b"\xb0\x04\x00\x02\x00\x11",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(2),
                properties: Properties::default(),
                reasons: vec![ReasonCode::NoSubscriptionExisted],
            }),
        ),
        (V5, b"\xf0\x00", Packet::Auth(Auth::default())),
    ];
    for (version, bytes, packet) in cases {
        assert_eq!(decode_all(bytes, version).unwrap().as_ref(), Some(&packet), "{bytes:x?}");
        assert_eq!(encode(&packet, version), bytes, "{packet:?}");
    }
}

#[test]
fn v5_subscription_options_bits() {
    let bytes: &[u8] = b"\x82\x07\x00\x01\x00\x00\x01a\x2e";
    let Some(Packet::Subscribe(subscribe)) = decode_all(bytes, V5).unwrap() else { panic!() };
    let options = subscribe.filters[0].1;
    assert_eq!(
        options,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }
    );
}

#[test]
fn a_3x_suback_says_failure_for_every_error() {
    let suback = Packet::SubAck(SubAck {
        packet_id: pid(1),
        properties: Properties::default(),
        reasons: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQos2],
    });
    assert_eq!(encode(&suback, V311), b"\x90\x04\x00\x01\x80\x02");
}

#[test]
fn oversized_packet_is_refused_before_its_body_arrives() {
    // A PUBLISH announcing 1,000 bytes of body, of which only the header has arrived.
    let mut buf = BytesMut::from(&b"\x30\xe8\x07"[..]);
    assert_eq!(
        Packet::decode(&mut buf, V311, 512),
        Err(DecodeError::PacketTooLarge { size: 1003, max: 512 })
    );
    assert_eq!(
        frame(b"\x30\xe8\x07", 2048).unwrap(),
        Some(Frame { total_len: 1003, header_len: 3 })
    );
}

#[test]
fn two_packets_in_one_buffer_decode_one_at_a_time() {
    let mut buf = BytesMut::from(&b"\xc0\x00\xd0\x00\xc0"[..]);
    assert_eq!(Packet::decode(&mut buf, V311, MAX).unwrap(), Some(Packet::PingReq));
    assert_eq!(Packet::decode(&mut buf, V311, MAX).unwrap(), Some(Packet::PingResp));
    assert_eq!(Packet::decode(&mut buf, V311, MAX).unwrap(), None);
    assert_eq!(&buf[..], b"\xc0");
}

#[test]
fn publish_payload_is_a_slice_of_the_read_buffer() {
    let mut buf = BytesMut::from(&b"\x30\x08\x00\x03a/bxyz"[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(publish)) = Packet::decode(&mut buf, V311, MAX).unwrap() else {
        panic!()
    };
    assert_eq!(publish.payload.as_ptr() as usize, start + 7, "payload was copied");
    assert_eq!(publish.topic.as_ptr() as usize, start + 4, "topic was copied");
}

// ---- Malformed packets, each with its exact error -------------------------------------------

#[test]
fn malformed_packets() {
    use DecodeError::*;
    use PacketType as T;
    let cases: Vec<(ProtocolVersion, &[u8], DecodeError)> = vec![
        (V311, b"\x00\x00", ReservedPacketType(0)),
        (V311, b"\xf0\x00", PacketTypeNotInVersion(T::Auth)),
        (V311, b"\x30\xff\xff\xff\xff\x01", MalformedVarint),
        (V311, b"\xc1\x00", InvalidHeaderFlags { packet_type: T::PingReq, flags: 1 }),
        (
            V311,
            b"\x80\x06\x00\x01\x00\x01a\x00",
            InvalidHeaderFlags { packet_type: T::Subscribe, flags: 0 },
        ),
        (V311, b"\x60\x02\x00\x01", InvalidHeaderFlags { packet_type: T::PubRel, flags: 0 }),
        (
            V311,
            b"\xa0\x05\x00\x01\x00\x01a",
            InvalidHeaderFlags { packet_type: T::Unsubscribe, flags: 0 },
        ),
        (V311, b"\xc0\x01\x00", TrailingBytes),
        (V311, b"\xe0\x01\x00", TrailingBytes),
        (V311, b"\x40\x03\x00\x01\x00", TrailingBytes),
        (V311, b"\x40\x01\x00", UnexpectedEnd),
        (V311, b"\x40\x02\x00\x00", ZeroPacketId(PacketType::PubAck)),
        (V311, b"\x32\x05\x00\x01a\x00\x00", ZeroPacketId(PacketType::Publish)),
        (V311, b"\x36\x05\x00\x01a\x00\x01", InvalidQos),
        (V311, b"\x38\x03\x00\x01a", InvalidHeaderFlags { packet_type: T::Publish, flags: 8 }),
        (V311, b"\x30\x03\x00\x01+", InvalidTopicName),
        (V311, b"\x30\x05\x00\x03a/#", InvalidTopicName),
        (V311, b"\x30\x02\x00\x00", InvalidTopicName),
        (V5, b"\x30\x03\x00\x00\x00", EmptyTopicWithoutAlias),
        (V311, b"\x30\x03\x00\x01\x00", NullCharacter),
        (V311, b"\x30\x04\x00\x02\xc0\xaf", InvalidUtf8),
        (V311, b"\x30\x03\x00\x05a", UnexpectedEnd),
        (V311, b"\x82\x02\x00\x01", NoTopicFilters(T::Subscribe)),
        (V311, b"\x82\x06\x00\x01\x00\x01a\x03", InvalidQos),
        (V311, b"\x82\x06\x00\x01\x00\x01a\x04", InvalidSubscriptionOptions),
        (V5, b"\x82\x07\x00\x01\x00\x00\x01a\x30", InvalidSubscriptionOptions),
        (V5, b"\x82\x07\x00\x01\x00\x00\x01a\x40", InvalidSubscriptionOptions),
        (V311, b"\x82\x07\x00\x01\x00\x02a#\x00", InvalidTopicFilter),
        (V311, b"\x82\x09\x00\x01\x00\x04a/#/\x00", InvalidTopicFilter),
        (V311, b"\xa2\x02\x00\x01", NoTopicFilters(T::Unsubscribe)),
        (V311, b"\x90\x03\x00\x01\x03", InvalidReasonCode { packet_type: T::SubAck, code: 3 }),
        (V311, b"\x20\x02\x02\x00", InvalidConnAckFlags(2)),
        (V311, b"\x20\x02\x00\x06", InvalidReasonCode { packet_type: T::ConnAck, code: 6 }),
        (V5, b"\x40\x03\x00\x01\x01", InvalidReasonCode { packet_type: T::PubAck, code: 1 }),
        (V5, b"\x62\x03\x00\x01\x10", InvalidReasonCode { packet_type: T::PubRel, code: 0x10 }),
        (V5, b"\xe0\x01\x01", InvalidReasonCode { packet_type: T::Disconnect, code: 1 }),
        (V5, b"\xf0\x01\x87", InvalidReasonCode { packet_type: T::Auth, code: 0x87 }),
        (
            V5,
            b"\x30\x06\x00\x01a\x02\x21\x01",
            PropertyNotAllowed { property: 0x21, context: "PUBLISH" },
        ),
        (V5, b"\xe0\x03\x00\x01\x7f", UnknownProperty(0x7f)),
        (V5, b"\xe0\x0c\x00\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x01", DuplicateProperty(0x11)),
        (V5, b"\xe0\x04\x00\x05\x11\x00", UnexpectedEnd),
        // CONNECT.
        (V311, b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", InvalidProtocolName),
        (V311, b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00", UnsupportedProtocolVersion(6)),
        (V311, b"\x10\x0e\x00\x06MQIsdp\x04\x02\x00\x3c\x00\x00", UnsupportedProtocolVersion(4)),
        (V311, b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", ConnectReservedFlag),
        (V311, b"\x10\x0c\x00\x04MQTT\x04\x22\x00\x3c\x00\x00", InvalidWillFlags),
        (V311, b"\x10\x0c\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00", InvalidWillFlags),
        (V311, b"\x10\x0c\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00", InvalidWillFlags),
        (V311, b"\x10\x0f\x00\x04MQTT\x04\x42\x00\x3c\x00\x00\x00\x01p", PasswordWithoutUsername),
        (V311, b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\x00", TrailingBytes),
        (V311, b"\x10\x0a\x00\x04MQTT\x04\x02\x00\x3c", UnexpectedEnd),
        (
            V5,
            b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00",
            InvalidPropertyValue(0x21),
        ),
        (
            V5,
            b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x02\x23\x01\x00\x00",
            PropertyNotAllowed { property: 0x23, context: "CONNECT" },
        ),
    ];
    for (version, bytes, expected) in cases {
        assert_eq!(decode_all(bytes, version), Err(expected.clone()), "{bytes:x?} in {version:?}");
    }
}

/// MQTT 3.1 CONNECTs with what 3.1.1 made errors: stray reserved and will bits, a user name
/// flagged and not sent. Mosquitto ignores them; so does Culex (tests/differential).
#[test]
fn v31_connect_flags_are_read_leniently() {
    let lenient: [&[u8]; 3] = [
        b"\x10\x0e\x00\x06MQIsdp\x03\x03\x00\x3c\x00\x00",
        b"\x10\x0e\x00\x06MQIsdp\x03\x2a\x00\x3c\x00\x00",
        b"\x10\x0e\x00\x06MQIsdp\x03\x82\x00\x3c\x00\x00",
    ];
    for bytes in lenient {
        let Ok(Some(Packet::Connect(connect))) = decode_all(bytes, V31) else {
            panic!("{bytes:x?} refused")
        };
        assert!(connect.will.is_none() && connect.username.is_none(), "{connect:?}");
    }
    let password_alone = b"\x10\x11\x00\x06MQIsdp\x03\x42\x00\x3c\x00\x00\x00\x01p";
    assert_eq!(decode_all(password_alone, V31), Err(DecodeError::PasswordWithoutUsername));
}

#[test]
fn error_reason_codes() {
    use DecodeError::*;
    assert_eq!(MalformedVarint.reason_code(), ReasonCode::MalformedPacket);
    assert_eq!(DuplicateProperty(1).reason_code(), ReasonCode::ProtocolError);
    assert_eq!(PacketTooLarge { size: 2, max: 1 }.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(UnsupportedProtocolVersion(6).reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(
        UnsupportedProtocolVersion(6).reason_code().connect_return_code(),
        ConnectReturnCode::UnacceptableProtocolVersion
    );
}

// ---- Property tests --------------------------------------------------------------------------

fn arb_string() -> impl Strategy<Value = ByteString> {
    "[^\u{0}]{0,12}".prop_map(ByteString::from)
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_topic() -> impl Strategy<Value = TopicName> {
    "[a-zA-Z0-9 /$é]{1,24}".prop_map(|s| TopicName::new(s).unwrap())
}

fn arb_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof!["[a-z0-9é]{0,6}", Just("+".to_string())];
    (vec(level, 1..5), any::<bool>(), prop::option::of("[a-z]{1,4}")).prop_map(
        |(levels, hash, share)| {
            let mut filter = levels.join("/");
            if filter.is_empty() && !hash {
                filter.push('+');
            }
            if hash {
                filter.push_str("/#");
            }
            if let Some(group) = share {
                filter = format!("$share/{group}/{filter}");
            }
            TopicFilter::new(filter).unwrap()
        },
    )
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn one_of(codes: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(codes)
}

/// Arbitrary properties, then only those `context` allows (one subscription id outside PUBLISH).
fn arb_properties(context: PropertyContext) -> BoxedStrategy<Properties> {
    use prop::option::of;
    let small = (
        (of(any::<bool>()), of(any::<u32>()), of(arb_string()), of(arb_topic()), of(arb_bytes())),
        (of(any::<u32>()), of(arb_string()), of(any::<u16>()), of(arb_string()), of(arb_bytes())),
        (
            of(any::<bool>()),
            of(any::<u32>()),
            of(any::<bool>()),
            of(arb_string()),
            of(arb_string()),
        ),
    );
    let rest = (
        (of(arb_string()), of(1..=u16::MAX), of(any::<u16>()), of(1..=u16::MAX)),
        (of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]), of(any::<bool>())),
        (of(1..=u32::MAX), of(any::<bool>()), of(any::<bool>()), of(any::<bool>())),
        vec(1..=wire::VARINT_MAX, 0..3),
        vec((arb_string(), arb_string()), 0..3),
    );
    (small, rest)
        .prop_map(move |(a, b)| {
            let ((pfi, mei, ct, rt, cd), (sei, aci, ska, am, ad), (rpi, wdi, rri, ri, sr)) = a;
            let ((rs, rm, tam, ta), (mq, ra), (mps, wsa, sia, ssa), ids, ups) = b;
            let nz16 = |v: Option<u16>| v.and_then(std::num::NonZeroU16::new);
            let mut p = Properties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                content_type: ct,
                response_topic: rt,
                correlation_data: cd,
                session_expiry_interval: sei,
                assigned_client_identifier: aci,
                server_keep_alive: ska,
                authentication_method: am,
                authentication_data: ad,
                request_problem_information: rpi,
                will_delay_interval: wdi,
                request_response_information: rri,
                response_information: ri,
                server_reference: sr,
                reason_string: rs,
                receive_maximum: nz16(rm),
                topic_alias_maximum: tam,
                topic_alias: nz16(ta),
                maximum_qos: mq,
                retain_available: ra,
                maximum_packet_size: mps.and_then(std::num::NonZeroU32::new),
                wildcard_subscription_available: wsa,
                subscription_identifier_available: sia,
                shared_subscription_available: ssa,
                subscription_identifiers: ids.into_iter().filter_map(SubscriptionId::new).collect(),
                user_properties: ups,
            };
            keep_allowed(&mut p, context);
            p
        })
        .boxed()
}

fn keep_allowed(p: &mut Properties, context: PropertyContext) {
    let allowed = |id: u8| allowed_contexts(id).is_some_and(|mask| mask & context.bit() != 0);
    macro_rules! keep {
        ($($id:literal $field:ident),* $(,)?) => {
            $( if !allowed($id) { p.$field = None; } )*
        };
    }
    keep!(
        0x01 payload_format_indicator, 0x02 message_expiry_interval, 0x03 content_type,
        0x08 response_topic, 0x09 correlation_data, 0x11 session_expiry_interval,
        0x12 assigned_client_identifier, 0x13 server_keep_alive, 0x15 authentication_method,
        0x16 authentication_data, 0x17 request_problem_information, 0x18 will_delay_interval,
        0x19 request_response_information, 0x1A response_information, 0x1C server_reference,
        0x1F reason_string, 0x21 receive_maximum, 0x22 topic_alias_maximum, 0x23 topic_alias,
        0x24 maximum_qos, 0x25 retain_available, 0x27 maximum_packet_size,
        0x28 wildcard_subscription_available, 0x29 subscription_identifier_available,
        0x2A shared_subscription_available,
    );
    if !allowed(0x0B) {
        p.subscription_identifiers.clear();
    } else if context != PropertyContext::Publish {
        p.subscription_identifiers.truncate(1);
    }
    if !allowed(0x26) {
        p.user_properties.clear();
    }
    assert!(p.fits(context));
}

/// Properties for `context` in 5.0; none in 3.x.
fn props_for(version: ProtocolVersion, context: PropertyContext) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        arb_properties(context).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn arb_connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let will = (
        arb_topic(),
        arb_bytes(),
        arb_qos(),
        any::<bool>(),
        props_for(version, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        (any::<bool>(), any::<bool>(), any::<u16>(), props_for(version, PropertyContext::Connect)),
        (
            arb_string(),
            prop::option::of(will),
            prop::option::of(arb_string()),
            prop::option::of(arb_bytes()),
        ),
    )
        .prop_map(
            move |(
                (bridge, clean_start, keep_alive_secs, properties),
                (client_id, will, username, mut password),
            )| {
                if version != V5 && username.is_none() {
                    password = None;
                }
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    bridge,
                    clean_start,
                    keep_alive_secs,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
        .boxed()
}

fn arb_publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        arb_qos(),
        any::<bool>(),
        any::<bool>(),
        arb_topic(),
        1..=u16::MAX,
        props_for(version, PropertyContext::Publish),
        arb_bytes(),
    )
        .prop_map(move |(qos, dup, retain, topic, id, properties, payload)| {
            let packet_id = (qos != QoS::AtMostOnce).then(|| pid(id));
            Packet::Publish(Publish {
                dup: dup && packet_id.is_some(),
                qos,
                retain,
                topic,
                packet_id,
                properties,
                payload,
            })
        })
        .boxed()
}

fn arb_ack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let tail = move |context, codes: &'static [ReasonCode]| {
        if v5 {
            (one_of(codes), arb_properties(context)).boxed()
        } else {
            Just((ReasonCode::Success, Properties::default())).boxed()
        }
    };
    let build = |ctor: fn(Ack) -> Packet| {
        move |(id, (reason, properties))| ctor(Ack { packet_id: pid(id), reason, properties })
    };
    prop_oneof![
        (1..=u16::MAX, tail(PropertyContext::PubAck, PUBLISH_RESPONSE_REASONS))
            .prop_map(build(Packet::PubAck)),
        (1..=u16::MAX, tail(PropertyContext::PubRec, PUBLISH_RESPONSE_REASONS))
            .prop_map(build(Packet::PubRec)),
        (1..=u16::MAX, tail(PropertyContext::PubRel, RELEASE_REASONS))
            .prop_map(build(Packet::PubRel)),
        (1..=u16::MAX, tail(PropertyContext::PubComp, RELEASE_REASONS))
            .prop_map(build(Packet::PubComp)),
    ]
    .boxed()
}

fn arb_subscriptions(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let options =
        (arb_qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
            if !v5 {
                return SubscriptionOptions { qos, ..Default::default() };
            }
            let retain_handling = match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendAtSubscribeIfNew,
                _ => RetainHandling::DoNotSend,
            };
            SubscriptionOptions { qos, no_local: nl, retain_as_published: rap, retain_handling }
        });
    let suback_codes: &'static [ReasonCode] = if v5 {
        SUBACK_REASONS
    } else {
        &[
            ReasonCode::Success,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2,
            ReasonCode::UnspecifiedError,
        ]
    };
    let unsuback_reasons =
        if v5 { vec(one_of(UNSUBACK_REASONS), 1..4).boxed() } else { Just(vec![]).boxed() };
    prop_oneof![
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::Subscribe),
            vec((arb_filter(), options), 1..4)
        )
            .prop_map(|(id, properties, filters)| Packet::Subscribe(Subscribe {
                packet_id: pid(id),
                properties,
                filters
            })),
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::SubAck),
            vec(one_of(suback_codes), 1..4)
        )
            .prop_map(|(id, properties, reasons)| Packet::SubAck(SubAck {
                packet_id: pid(id),
                properties,
                reasons
            })),
        (1..=u16::MAX, props_for(version, PropertyContext::Unsubscribe), vec(arb_filter(), 1..4))
            .prop_map(|(id, properties, filters)| Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(id),
                properties,
                filters
            })),
        (1..=u16::MAX, props_for(version, PropertyContext::UnsubAck), unsuback_reasons).prop_map(
            |(id, properties, reasons)| Packet::UnsubAck(UnsubAck {
                packet_id: pid(id),
                properties,
                reasons
            })
        ),
    ]
    .boxed()
}

fn arb_control(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let connack_reason = if version.is_v5() {
        one_of(CONNACK_REASONS).boxed()
    } else {
        prop::sample::select(&[0u8, 1, 2, 3, 4, 5][..])
            .prop_map(|c| ConnectReturnCode::from_u8(c).unwrap().reason_code())
            .boxed()
    };
    let connack = (any::<bool>(), connack_reason, props_for(version, PropertyContext::ConnAck))
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck { session_present, reason, properties })
        });
    let pings = prop_oneof![Just(Packet::PingReq), Just(Packet::PingResp)];
    if !version.is_v5() {
        return prop_oneof![connack, pings, Just(Packet::Disconnect(Disconnect::default()))]
            .boxed();
    }
    let disconnect = (one_of(DISCONNECT_REASONS), arb_properties(PropertyContext::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let auth = (one_of(AUTH_REASONS), arb_properties(PropertyContext::Auth))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    prop_oneof![connack, pings, disconnect, auth].boxed()
}

fn arb_packet(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    prop_oneof![
        arb_connect(version),
        arb_publish(version),
        arb_ack(version),
        arb_subscriptions(version),
        arb_control(version),
    ]
}

fn arb_versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![
        arb_packet(V31).prop_map(|p| (V31, p)),
        arb_packet(V311).prop_map(|p| (V311, p)),
        arb_packet(V5).prop_map(|p| (V5, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips((version, packet) in arb_versioned_packet()) {
        let bytes = encode(&packet, version);
        prop_assert_eq!(decode_all(&bytes, version), Ok(Some(packet)));
    }

    #[test]
    fn every_prefix_is_incomplete((version, packet) in arb_versioned_packet()) {
        let bytes = encode(&packet, version);
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            prop_assert_eq!(Packet::decode(&mut buf, version, MAX), Ok(None));
            prop_assert_eq!(buf.len(), len, "a partial packet was consumed");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), max in 2u32..300) {
        for version in [V31, V311, V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Packet::decode(&mut buf, version, max) {}
        }
    }

    #[test]
    fn mutated_packets_never_panic((version, packet) in arb_versioned_packet(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = encode(&packet, version);
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = Packet::decode(&mut buf, version, MAX) {}
    }
}
