//! How stored things are laid out as bytes. Messages and subscriptions are written as the MQTT
//! 5.0 packets that carry them (PUBLISH, SUBSCRIBE), so the codec's own validation checks what
//! is read back; a few fixed-width fields around them hold what MQTT packets do not.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::protocol::{
    Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionId,
    SubscriptionOptions, TopicFilter, PACKET_SIZE_MAX,
};

/// Bumped when a layout changes; a store written with another is refused at start.
/// 2: incoming QoS 2 ids carry the `RouteTag` of their routing; sessions keep marks.
pub const FORMAT_VERSION: u64 = 2;

/// How a QoS 2 message from a stored session was routed: by which shard, and that shard's
/// number for it. Numbers grow in routing order and across restarts, and a session takes one
/// routing shard's messages in that order (one queue per ordered pair of shards), so each
/// stored session keeps a mark per routing shard, committed with what those messages stored:
/// after a crash it tells whether the session had a message (see docs/ARCHITECTURE.md,
/// Persistence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTag {
    pub shard: u16,
    pub number: u64,
}

impl RouteTag {
    /// A message routed while its publisher's session was not stored: no session's mark is
    /// below it, so it is never replayed.
    pub const NOT_REPLAYED: RouteTag = RouteTag { shard: 0, number: 0 };

    pub fn encode(self) -> [u8; 10] {
        let mut bytes = [0; 10];
        bytes[..2].copy_from_slice(&self.shard.to_be_bytes());
        bytes[2..].copy_from_slice(&self.number.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<RouteTag> {
        let shard = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
        let number = u64::from_be_bytes(bytes.get(2..)?.try_into().ok()?);
        Some(RouteTag { shard, number })
    }
}

/// A persistent session: who, which incarnation, how long it lives offline, what it subscribes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub client_id: ByteString,
    /// Grows each time the session is installed on a shard: after a crash in the middle of a
    /// takeover both shards' stores may hold the session, and the larger epoch is the live one.
    pub epoch: u64,
    /// 5.0 Session Expiry Interval (0xFFFFFFFF: never).
    pub expiry_secs: u32,
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    /// A will waiting for its Will Delay Interval, and when it is due (Unix milliseconds).
    pub delayed_will: Option<(StoredMessage, u64)>,
}

/// A message as published, with what the broker knows of it beyond the PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Topic, payload, QoS, retain and 5.0 properties (the packet id is meaningless here).
    pub publish: Publish,
    pub publisher: ByteString,
    /// Unix milliseconds after which it is dropped undelivered (Message Expiry Interval).
    pub expires_at_ms: Option<u64>,
    /// The user name it was published with: kept for retained messages only, which need their
    /// source's write access again when they are sent (`check_retain_source`).
    pub source: StoredSource,
}

/// A retained message's source as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSource {
    /// Not a client's (the broker's own, a will), or written before sources were kept.
    Unknown,
    /// A client's, with the user name it had, if any.
    Client(Option<ByteString>),
}

/// One message queued or in flight to one session.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// Order of delivery within the session.
    pub seq: u64,
    pub message: StoredMessage,
    /// The QoS and retain flag it is delivered with.
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<SubscriptionId>,
    pub stage: Stage,
}

/// Where a delivery stands: its packet id once sent, and what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Queued,
    AwaitPubAck(PacketId),
    AwaitPubRec(PacketId),
    AwaitPubComp(PacketId),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RecordError(pub String);

fn damaged(what: &str) -> RecordError {
    RecordError(format!("damaged {what} record"))
}

// ---- Keys ---------------------------------------------------------------------------------
// Entries and incoming ids are keyed `client id, 0x00, epoch, n` (big-endian), so that one
// session incarnation's records form one key range. Client ids cannot contain U+0000
// [MQTT-1.5.4-2], so the separator is unambiguous.

pub fn session_prefix(client_id: &str, epoch: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&epoch.to_be_bytes());
    key
}

pub fn numbered_key(client_id: &str, epoch: u64, n: u64) -> Vec<u8> {
    let mut key = session_prefix(client_id, epoch);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Splits a numbered key into client id, epoch and number.
pub fn parse_numbered_key(key: &[u8]) -> Option<(&str, u64, u64)> {
    let split = key.len().checked_sub(17)?;
    let (client, rest) = key.split_at(split);
    let (separator, numbers) = rest.split_first()?;
    if *separator != 0 {
        return None;
    }
    let epoch = u64::from_be_bytes(numbers.get(..8)?.try_into().ok()?);
    let n = u64::from_be_bytes(numbers.get(8..)?.try_into().ok()?);
    Some((std::str::from_utf8(client).ok()?, epoch, n))
}

// ---- Values -------------------------------------------------------------------------------

fn put_packet(buf: &mut BytesMut, packet: &Packet) {
    let start = buf.len();
    buf.put_u32(0);
    packet.encode(ProtocolVersion::V5, buf);
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn take_packet(buf: &mut Bytes, what: &str) -> Result<Packet, RecordError> {
    if buf.remaining() < 4 {
        return Err(damaged(what));
    }
    let len = buf.get_u32() as usize;
    if buf.remaining() < len {
        return Err(damaged(what));
    }
    let mut bytes = BytesMut::from(&buf.split_to(len)[..]);
    match Packet::decode(&mut bytes, ProtocolVersion::V5, PACKET_SIZE_MAX) {
        Ok(Some(packet)) if bytes.is_empty() => Ok(packet),
        _ => Err(damaged(what)),
    }
}

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

fn take_string(buf: &mut Bytes, what: &str) -> Result<ByteString, RecordError> {
    if buf.remaining() < 2 {
        return Err(damaged(what));
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len {
        return Err(damaged(what));
    }
    ByteString::try_from(buf.split_to(len)).map_err(|_| damaged(what))
}

fn take_u64(buf: &mut Bytes, what: &str) -> Result<u64, RecordError> {
    if buf.remaining() < 8 {
        return Err(damaged(what));
    }
    Ok(buf.get_u64())
}

pub fn encode_session(session: &StoredSession) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u64(session.epoch);
    buf.put_u32(session.expiry_secs);
    buf.put_u32(session.subscriptions.len() as u32);
    for (filter, options, id) in &session.subscriptions {
        let properties = Properties {
            subscription_identifiers: id.iter().copied().collect(),
            ..Default::default()
        };
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties,
            filters: vec![(filter.clone(), *options)],
        };
        put_packet(&mut buf, &Packet::Subscribe(subscribe));
    }
    if let Some((will, due_ms)) = &session.delayed_will {
        buf.put_u64(*due_ms);
        encode_message(will, &mut buf);
    }
    buf.to_vec()
}

pub fn decode_session(client_id: &str, bytes: &[u8]) -> Result<StoredSession, RecordError> {
    let what = "session";
    let mut buf = Bytes::copy_from_slice(bytes);
    let epoch = take_u64(&mut buf, what)?;
    if buf.remaining() < 8 {
        return Err(damaged(what));
    }
    let expiry_secs = buf.get_u32();
    let count = buf.get_u32();
    let mut subscriptions = Vec::new();
    for _ in 0..count {
        let Packet::Subscribe(mut subscribe) = take_packet(&mut buf, what)? else {
            return Err(damaged(what));
        };
        let id = subscribe.properties.subscription_identifiers.first().copied();
        let (filter, options) = subscribe.filters.pop().ok_or_else(|| damaged(what))?;
        subscriptions.push((filter, options, id));
    }
    let delayed_will = if buf.has_remaining() {
        let due_ms = take_u64(&mut buf, what)?;
        let will = decode_message(&mut buf, what)?;
        if buf.has_remaining() {
            return Err(damaged(what));
        }
        Some((will, due_ms))
    } else {
        None
    };
    Ok(StoredSession {
        client_id: client_id.into(),
        epoch,
        expiry_secs,
        subscriptions,
        delayed_will,
    })
}

pub fn encode_message(message: &StoredMessage, buf: &mut BytesMut) {
    buf.put_u64(message.expires_at_ms.unwrap_or(0));
    put_string(buf, &message.publisher);
    let mut publish = message.publish.clone();
    publish.dup = false;
    publish.packet_id = (publish.qos != QoS::AtMostOnce).then_some(PacketId::MIN);
    put_packet(buf, &Packet::Publish(publish));
}

fn decode_message(buf: &mut Bytes, what: &str) -> Result<StoredMessage, RecordError> {
    let expires_at_ms = Some(take_u64(buf, what)?).filter(|ms| *ms != 0);
    let publisher = take_string(buf, what)?;
    let Packet::Publish(publish) = take_packet(buf, what)? else {
        return Err(damaged(what));
    };
    Ok(StoredMessage { publish, publisher, expires_at_ms, source: StoredSource::Unknown })
}

pub fn encode_entry(entry: &StoredEntry) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u8(entry.qos as u8);
    buf.put_u8(u8::from(entry.retain));
    buf.put_u8(entry.subscription_ids.len() as u8);
    for id in &entry.subscription_ids {
        buf.put_u32(id.get());
    }
    encode_message(&entry.message, &mut buf);
    buf.to_vec()
}

/// An entry's body; its stage is stored apart (it changes, the body does not).
pub fn decode_entry(seq: u64, bytes: &[u8], stage: Stage) -> Result<StoredEntry, RecordError> {
    let what = "queued message";
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 3 {
        return Err(damaged(what));
    }
    let qos = QoS::from_u8(buf.get_u8()).map_err(|_| damaged(what))?;
    let retain = buf.get_u8() != 0;
    let count = buf.get_u8();
    let mut subscription_ids = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        if buf.remaining() < 4 {
            return Err(damaged(what));
        }
        subscription_ids.push(SubscriptionId::new(buf.get_u32()).ok_or_else(|| damaged(what))?);
    }
    let message = decode_message(&mut buf, what)?;
    Ok(StoredEntry { seq, message, qos, retain, subscription_ids, stage })
}

pub fn encode_stage(stage: Stage) -> [u8; 3] {
    let (tag, id) = match stage {
        Stage::Queued => (0, 0),
        Stage::AwaitPubAck(id) => (1, id.get()),
        Stage::AwaitPubRec(id) => (2, id.get()),
        Stage::AwaitPubComp(id) => (3, id.get()),
    };
    let [high, low] = id.to_be_bytes();
    [tag, high, low]
}

pub fn decode_stage(bytes: &[u8]) -> Result<Stage, RecordError> {
    let [tag, high, low] = bytes.try_into().map_err(|_| damaged("delivery stage"))?;
    let id = PacketId::new(u16::from_be_bytes([high, low]));
    match (tag, id) {
        (0, _) => Ok(Stage::Queued),
        (1, Some(id)) => Ok(Stage::AwaitPubAck(id)),
        (2, Some(id)) => Ok(Stage::AwaitPubRec(id)),
        (3, Some(id)) => Ok(Stage::AwaitPubComp(id)),
        _ => Err(damaged("delivery stage")),
    }
}

/// A retained message, or its deletion (kept as a tombstone until start-up settles which
/// shard's record of the topic is newest).
///
/// A client's message is followed by its source: 0 for no user name, 1 and the user name. A
/// record without it (the broker's own messages, and every record written before sources were
/// kept) reads back as `StoredSource::Unknown`.
pub fn encode_retained(stamp: u64, message: Option<&StoredMessage>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u64(stamp);
    if let Some(message) = message {
        encode_message(message, &mut buf);
        match &message.source {
            StoredSource::Unknown => {}
            StoredSource::Client(None) => buf.put_u8(0),
            StoredSource::Client(Some(username)) => {
                buf.put_u8(1);
                put_string(&mut buf, username);
            }
        }
    }
    buf.to_vec()
}

pub fn decode_retained(bytes: &[u8]) -> Result<(u64, Option<StoredMessage>), RecordError> {
    let what = "retained message";
    let mut buf = Bytes::copy_from_slice(bytes);
    let stamp = take_u64(&mut buf, what)?;
    if !buf.has_remaining() {
        return Ok((stamp, None));
    }
    let mut message = decode_message(&mut buf, what)?;
    if buf.has_remaining() {
        message.source = match buf.get_u8() {
            0 => StoredSource::Client(None),
            1 => StoredSource::Client(Some(take_string(&mut buf, what)?)),
            _ => return Err(damaged(what)),
        };
    }
    Ok((stamp, Some(message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RetainHandling, TopicName};

    fn message() -> StoredMessage {
        let properties = Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
            ..Default::default()
        };
        StoredMessage {
            publish: Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: TopicName::new("a/b").unwrap(),
                packet_id: PacketId::new(1),
                properties,
                payload: Bytes::from_static(b"payload"),
            },
            publisher: "pub-1".into(),
            expires_at_ms: Some(1_790_000_000_000),
            source: StoredSource::Unknown,
        }
    }

    #[test]
    fn records_round_trip() {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::DoNotSend,
        };
        let session = StoredSession {
            client_id: "c1".into(),
            epoch: 7,
            expiry_secs: u32::MAX,
            subscriptions: vec![
                (TopicFilter::new("a/#").unwrap(), options, SubscriptionId::new(9)),
                (TopicFilter::new("$share/g/x").unwrap(), SubscriptionOptions::default(), None),
            ],
            delayed_will: Some((message(), 1_790_000_000_000)),
        };
        assert_eq!(decode_session("c1", &encode_session(&session)), Ok(session));

        let entry = StoredEntry {
            seq: 42,
            message: message(),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![SubscriptionId::new(9).unwrap()],
            stage: Stage::AwaitPubRec(PacketId::new(300).unwrap()),
        };
        let stage = decode_stage(&encode_stage(entry.stage)).unwrap();
        assert_eq!(decode_entry(42, &encode_entry(&entry), stage), Ok(entry));

        let retained = encode_retained(5, Some(&message()));
        assert_eq!(decode_retained(&retained), Ok((5, Some(message()))));
        for source in [StoredSource::Client(None), StoredSource::Client(Some("u".into()))] {
            let message = StoredMessage { source, ..message() };
            let retained = encode_retained(7, Some(&message));
            assert_eq!(decode_retained(&retained), Ok((7, Some(message))));
        }
        assert_eq!(decode_retained(&encode_retained(6, None)), Ok((6, None)));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let entry = encode_entry(&StoredEntry {
            seq: 1,
            message: message(),
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Vec::new(),
            stage: Stage::Queued,
        });
        for len in 0..entry.len() {
            assert!(decode_entry(1, &entry[..len], Stage::Queued).is_err(), "prefix {len}");
        }
        assert!(decode_stage(&[9, 0, 1]).is_err());
        assert!(decode_session("c", &[0, 1]).is_err());
    }

    #[test]
    fn numbered_keys_parse_back() {
        let key = numbered_key("client/1", 3, 99);
        assert_eq!(parse_numbered_key(&key), Some(("client/1", 3, 99)));
        assert!(key.starts_with(&session_prefix("client/1", 3)));
        assert_eq!(parse_numbered_key(b"short"), None);
    }
}
