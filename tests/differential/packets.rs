//! Packets as a client sends them, built byte by byte so that a conversation can say anything,
//! malformed included: the broker's own encoder is not used on this side of the wire.

use super::common::{mqtt_string, raw_packet, varint};

/// The protocol a client speaks: its CONNECT's name and level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V {
    V31,
    V311,
    V5,
}

impl V {
    pub fn is_5(self) -> bool {
        self == V::V5
    }

    pub fn label(self) -> &'static str {
        match self {
            V::V31 => "v3.1",
            V::V311 => "v3.1.1",
            V::V5 => "v5",
        }
    }

    /// A 5.0 packet's property section when it has none; nothing before 5.0.
    fn no_properties(self) -> &'static [u8] {
        if self.is_5() {
            &[0]
        } else {
            &[]
        }
    }
}

/// One 5.0 property: its identifier, then its value as the wire has it.
pub struct Prop(Vec<u8>);

impl Prop {
    pub fn byte(id: u8, value: u8) -> Prop {
        Prop(vec![id, value])
    }
    pub fn u16(id: u8, value: u16) -> Prop {
        let mut out = vec![id];
        out.extend(value.to_be_bytes());
        Prop(out)
    }
    pub fn u32(id: u8, value: u32) -> Prop {
        let mut out = vec![id];
        out.extend(value.to_be_bytes());
        Prop(out)
    }
    pub fn varint(id: u8, value: u32) -> Prop {
        let mut out = vec![id];
        out.extend(varint(value as usize));
        Prop(out)
    }
    pub fn text(id: u8, value: &str) -> Prop {
        let mut out = vec![id];
        out.extend(mqtt_string(value));
        Prop(out)
    }
    pub fn pair(name: &str, value: &str) -> Prop {
        let mut out = vec![0x26];
        out.extend(mqtt_string(name));
        out.extend(mqtt_string(value));
        Prop(out)
    }
}

/// A property section: its length, then the properties; nothing before 5.0.
pub fn properties(v: V, props: &[Prop]) -> Vec<u8> {
    if !v.is_5() {
        return Vec::new();
    }
    let body: Vec<u8> = props.iter().flat_map(|p| p.0.iter().copied()).collect();
    let mut out = varint(body.len());
    out.extend(body);
    out
}

/// A will: topic, payload, QoS, retain, and its 5.0 properties.
pub struct Will {
    pub topic: String,
    pub payload: &'static str,
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<Prop>,
}

/// A CONNECT, every field chosen; `Connect::new` gives the common case.
pub struct Connect {
    pub v: V,
    pub id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Vec<Prop>,
    pub will: Option<Will>,
    pub username: Option<&'static str>,
    pub password: Option<&'static str>,
}

impl Connect {
    /// A clean CONNECT with keep alive 60, no will and no credentials.
    pub fn new(v: V, id: &str) -> Connect {
        Connect {
            v,
            id: id.to_string(),
            clean: true,
            keep_alive: 60,
            props: Vec::new(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | will.qos << 3 | u8::from(will.retain) << 5;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        let mut body = self.header(flags);
        body.extend(properties(self.v, &self.props));
        body.extend(mqtt_string(&self.id));
        if let Some(will) = &self.will {
            body.extend(properties(self.v, &will.props));
            body.extend(mqtt_string(&will.topic));
            body.extend(mqtt_string(will.payload));
        }
        for text in [self.username, self.password].into_iter().flatten() {
            body.extend(mqtt_string(text));
        }
        raw_packet(0x10, &body)
    }

    /// The variable header up to the properties: protocol name, level, `flags`, keep alive.
    pub fn header(&self, flags: u8) -> Vec<u8> {
        let (name, level) = match self.v {
            V::V31 => ("MQIsdp", 3),
            V::V311 => ("MQTT", 4),
            V::V5 => ("MQTT", 5),
        };
        let mut body = mqtt_string(name);
        body.extend([level, flags]);
        body.extend(self.keep_alive.to_be_bytes());
        body
    }
}

/// A PUBLISH; `id` is used at QoS 1 and 2 only.
pub fn publish(
    v: V,
    topic: &str,
    qos: u8,
    retain: bool,
    id: u16,
    props: &[Prop],
    payload: &str,
) -> Vec<u8> {
    let mut body = mqtt_string(topic);
    if qos > 0 {
        body.extend(id.to_be_bytes());
    }
    body.extend(properties(v, props));
    body.extend(payload.as_bytes());
    raw_packet(0x30 | qos << 1 | u8::from(retain), &body)
}

/// A SUBSCRIBE of `filters`, each with its options byte (the QoS before 5.0).
pub fn subscribe(v: V, id: u16, props: &[Prop], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(properties(v, props));
    for (filter, options) in filters {
        body.extend(mqtt_string(filter));
        body.push(*options);
    }
    raw_packet(0x82, &body)
}

pub fn unsubscribe(v: V, id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(v.no_properties());
    for filter in filters {
        body.extend(mqtt_string(filter));
    }
    raw_packet(0xa2, &body)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (by `first_byte`), in its shortest form.
pub fn ack(first_byte: u8, id: u16) -> Vec<u8> {
    raw_packet(first_byte, &id.to_be_bytes())
}

pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0]
}

/// A DISCONNECT; a 5.0 one with `reason` when it is not Normal.
pub fn disconnect(v: V, reason: u8) -> Vec<u8> {
    if v.is_5() && reason != 0 {
        raw_packet(0xe0, &[reason, 0])
    } else {
        vec![0xe0, 0]
    }
}
