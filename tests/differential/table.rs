//! The conversations, generated from tables: each family varies what a client may choose
//! (protocol version, QoS, flags, properties, options) and plays the same script for every
//! combination. Every conversation has its own client ids (`d<n>a`, `d<n>b`, ...) and topics
//! (`d/<n>/...`), so they can run side by side on one broker.

use std::time::Duration;

use super::packets::{
    ack, disconnect, pingreq, properties, publish, subscribe, unsubscribe, Connect, Prop, Will,
    PUBACK, PUBCOMP, PUBREC, PUBREL, V,
};
use super::{Conversation, Setting, Step};
use crate::common::{mqtt_string, raw_packet, varint};

const VERSIONS: [V; 3] = [V::V31, V::V311, V::V5];
const V311_AND_V5: [V; 2] = [V::V311, V::V5];

/// The bytes of a packet a conversation sends, made for that conversation (its topics, ids).
type Packet<'a> = Box<dyn Fn(&Script) -> Vec<u8> + 'a>;

/// One conversation being written: its number names its clients and topics.
pub struct Script {
    n: usize,
    steps: Vec<Step>,
}

impl Script {
    /// Client `k`'s id.
    fn id(&self, k: usize) -> String {
        format!("d{}{}", self.n, char::from(b'a' + k as u8))
    }

    /// A topic of this conversation's own.
    fn topic(&self, leaf: &str) -> String {
        format!("d/{}/{leaf}", self.n)
    }

    fn send(&mut self, k: usize, bytes: Vec<u8>) {
        self.steps.push(Step::Send(k, bytes));
    }

    fn recv(&mut self, k: usize, count: usize) {
        self.steps.push(Step::Recv(k, count));
    }

    fn quiet(&mut self, k: usize) {
        self.steps.push(Step::Quiet(k));
    }

    fn gone(&mut self, k: usize) {
        self.steps.push(Step::Gone(k));
    }

    fn drop_socket(&mut self, k: usize) {
        self.steps.push(Step::Drop(k));
    }

    fn pause(&mut self, millis: u64) {
        self.steps.push(Step::Pause(Duration::from_millis(millis)));
    }

    /// Client `k` sends `connect` and reads its answer.
    fn open(&mut self, k: usize, connect: &Connect) {
        self.send(k, connect.bytes());
        self.recv(k, 1);
    }

    /// Client `k` connects cleanly with its own id.
    fn connect(&mut self, k: usize, v: V) {
        let connect = Connect::new(v, &self.id(k));
        self.open(k, &connect);
    }

    /// Client `k` subscribes to one filter and reads the SUBACK.
    fn subscribe(&mut self, k: usize, v: V, filter: &str, options: u8) {
        self.send(k, subscribe(v, 1, &[], &[(filter, options)]));
        self.recv(k, 1);
    }

    /// Is client `k` still connected? A PINGREQ says.
    fn probe(&mut self, k: usize) {
        self.send(k, pingreq());
        self.recv(k, 1);
    }

    /// Client `k` says goodbye and waits for the close.
    fn bye(&mut self, k: usize, v: V) {
        self.send(k, disconnect(v, 0));
        self.gone(k);
    }

    /// Client `k` publishes and completes its side of the QoS handshake (packet id 1).
    fn publish(&mut self, k: usize, v: V, topic: &str, qos: u8, retain: bool, props: &[Prop]) {
        self.send(k, publish(v, topic, qos, retain, 1, props, "m"));
        match qos {
            1 => self.recv(k, 1),
            2 => {
                self.recv(k, 1);
                self.send(k, ack(PUBREL, 1));
                self.recv(k, 1);
            }
            _ => {}
        }
    }

    /// Client `k` receives one PUBLISH at `qos` (the broker's packet id `id`) and acknowledges it.
    fn receive(&mut self, k: usize, qos: u8, id: u16) {
        self.recv(k, 1);
        match qos {
            1 => self.send(k, ack(PUBACK, id)),
            2 => {
                self.send(k, ack(PUBREC, id));
                self.recv(k, 1);
                self.send(k, ack(PUBCOMP, id));
            }
            _ => {}
        }
    }
}

/// Conversations being generated, numbered as they are added.
struct Table {
    conversations: Vec<Conversation>,
    next: usize,
}

impl Table {
    fn add(&mut self, name: String, script: impl FnOnce(&mut Script)) {
        self.next += 1;
        let mut s = Script { n: self.next, steps: Vec::new() };
        script(&mut s);
        self.conversations.push(Conversation { name, steps: s.steps });
    }
}

pub fn settings() -> Vec<Setting> {
    let mut next = 0;
    let mut table = |families: &[fn(&mut Table)]| {
        let mut t = Table { conversations: Vec::new(), next };
        for family in families {
            family(&mut t);
        }
        next = t.next;
        t.conversations
    };
    let open = table(&[
        connects,
        connect_properties,
        bad_connects,
        deliveries,
        retained_on_subscribe,
        subscription_options,
        filters_and_topics,
        unsubscribes,
        wills,
        sessions,
        topic_aliases,
        flow,
        malformed,
    ]);
    let guarded = table(&[credentials, access]);
    let bounded = table(&[limits]);
    let downgraded = table(&[downgrades]);
    vec![
        Setting {
            name: "anonymous",
            config: "allow_anonymous true",
            users: &[],
            files: Vec::new(),
            conversations: open,
        },
        Setting {
            name: "limits",
            config: "allow_anonymous true\nmax_packet_size 100\nmax_inflight_messages 2\n\
                     max_queued_messages 2\nmax_topic_alias 3",
            users: &[],
            files: Vec::new(),
            conversations: bounded,
        },
        Setting {
            name: "downgrades",
            config: "allow_anonymous true\nmax_qos 1\nretain_available false",
            users: &[],
            files: Vec::new(),
            conversations: downgraded,
        },
        Setting {
            name: "passwords and ACL",
            config: "allow_anonymous false\npassword_file {files}/passwd\nacl_file {files}/acl",
            users: &[("u", "p")],
            files: vec![("acl", ACL.to_string())],
            conversations: guarded,
        },
    ]
}

/// Every protocol, clean or not, with or without keep alive and credentials: CONNACK, PINGRESP,
/// and the session present flag when the same client id comes back.
fn connects(t: &mut Table) {
    let credentials: [(&str, Option<&'static str>, Option<&'static str>); 3] = [
        ("anonymous", None, None),
        ("user", Some("u"), None),
        ("user+password", Some("u"), Some("p")),
    ];
    for v in VERSIONS {
        for clean in [true, false] {
            for keep_alive in [0, 60] {
                for (who, username, password) in credentials {
                    let name = format!(
                        "connect {} clean={clean} keep_alive={keep_alive} {who}",
                        v.label()
                    );
                    t.add(name, |s| {
                        let connect = Connect {
                            clean,
                            keep_alive,
                            username,
                            password,
                            ..Connect::new(v, &s.id(0))
                        };
                        s.open(0, &connect);
                        s.probe(0);
                        s.bye(0, v);
                        s.open(1, &connect);
                        s.bye(1, v);
                    });
                }
            }
        }
        for clean in [true, false] {
            t.add(format!("connect {} clean={clean} empty client id", v.label()), |s| {
                s.open(0, &Connect { clean, ..Connect::new(v, "") });
                s.probe(0);
            });
        }
    }
    t.add("connect v5 session expiry 300, then back".into(), |s| {
        let connect = Connect {
            clean: false,
            props: vec![Prop::u32(0x11, 300)],
            ..Connect::new(V::V5, &s.id(0))
        };
        s.open(0, &connect);
        s.bye(0, V::V5);
        s.open(1, &connect);
        s.bye(1, V::V5);
        s.open(2, &Connect { clean: true, ..Connect::new(V::V5, &s.id(0)) });
        s.bye(2, V::V5);
    });
    t.add("connect v3.1.1 takeover by the same client id".into(), |s| {
        s.connect(0, V::V311);
        s.connect(1, V::V311);
        s.gone(0);
        s.probe(1);
    });
    t.add("connect v5 takeover by the same client id".into(), |s| {
        let id = s.id(0);
        s.connect(0, V::V5);
        s.open(1, &Connect::new(V::V5, &id));
        s.gone(0);
        s.probe(1);
    });
}

/// A 5.0 CONNECT with each property alone, valid and not.
fn connect_properties(t: &mut Table) {
    let cases: Vec<(&str, Vec<Prop>)> = vec![
        ("session expiry 0", vec![Prop::u32(0x11, 0)]),
        ("session expiry 60", vec![Prop::u32(0x11, 60)]),
        ("session expiry forever", vec![Prop::u32(0x11, u32::MAX)]),
        ("receive maximum 1", vec![Prop::u16(0x21, 1)]),
        ("receive maximum 65535", vec![Prop::u16(0x21, 65535)]),
        ("receive maximum 0", vec![Prop::u16(0x21, 0)]),
        ("maximum packet size 20", vec![Prop::u32(0x27, 20)]),
        ("maximum packet size 0", vec![Prop::u32(0x27, 0)]),
        ("topic alias maximum 0", vec![Prop::u16(0x22, 0)]),
        ("topic alias maximum 5", vec![Prop::u16(0x22, 5)]),
        ("request response information 1", vec![Prop::byte(0x19, 1)]),
        ("request response information 2", vec![Prop::byte(0x19, 2)]),
        ("request problem information 0", vec![Prop::byte(0x17, 0)]),
        ("request problem information 2", vec![Prop::byte(0x17, 2)]),
        ("user property", vec![Prop::pair("k", "v")]),
        ("authentication method", vec![Prop::text(0x15, "SCRAM-SHA-1")]),
        ("authentication data without a method", vec![Prop::text(0x16, "x")]),
        ("session expiry twice", vec![Prop::u32(0x11, 1), Prop::u32(0x11, 2)]),
        ("payload format indicator (not a CONNECT property)", vec![Prop::byte(0x01, 1)]),
        ("unknown property 0x7f", vec![Prop::byte(0x7f, 1)]),
    ];
    for (what, props) in cases {
        t.add(format!("connect v5 {what}"), |s| {
            s.open(0, &Connect { props, ..Connect::new(V::V5, &s.id(0)) });
            s.probe(0);
        });
    }
}

/// CONNECTs a broker must refuse, and packets that are not a CONNECT first.
fn bad_connects(t: &mut Table) {
    for v in VERSIONS {
        let header = |s: &Script, flags: u8| Connect::new(v, &s.id(0)).header(flags);
        let raw = |mut body: Vec<u8>, tail: Vec<u8>| {
            body.extend(tail);
            raw_packet(0x10, &body)
        };
        let no_props = properties(v, &[]);
        let cases: Vec<(&str, Packet<'_>)> = vec![
            (
                "reserved flag set",
                Box::new(|s| {
                    raw(header(s, 0x03), [no_props.clone(), mqtt_string(&s.id(0))].concat())
                }),
            ),
            (
                "will QoS 3",
                Box::new(|s| {
                    raw(
                        header(s, 0x02 | 0x04 | 0x18),
                        [
                            no_props.clone(),
                            mqtt_string(&s.id(0)),
                            no_props.clone(),
                            mqtt_string("w"),
                            mqtt_string("x"),
                        ]
                        .concat(),
                    )
                }),
            ),
            (
                "will retain without a will",
                Box::new(|s| {
                    raw(header(s, 0x22), [no_props.clone(), mqtt_string(&s.id(0))].concat())
                }),
            ),
            (
                "will QoS without a will",
                Box::new(|s| {
                    raw(header(s, 0x0a), [no_props.clone(), mqtt_string(&s.id(0))].concat())
                }),
            ),
            (
                "password without a user name",
                Box::new(|s| {
                    raw(
                        header(s, 0x42),
                        [no_props.clone(), mqtt_string(&s.id(0)), mqtt_string("p")].concat(),
                    )
                }),
            ),
            (
                "user name flag without a user name",
                Box::new(|s| {
                    raw(header(s, 0x82), [no_props.clone(), mqtt_string(&s.id(0))].concat())
                }),
            ),
            (
                "client id of 24 characters",
                Box::new(|s| Connect::new(v, &format!("{:x<24}", s.id(0))).bytes()),
            ),
            (
                "client id not UTF-8",
                Box::new(|_| {
                    raw(
                        Connect::new(v, "").header(0x02),
                        [no_props.clone(), vec![0, 2, 0xc3, 0x28]].concat(),
                    )
                }),
            ),
            ("truncated", Box::new(|s| raw(header(s, 0x02), Vec::new()))),
        ];
        for (what, build) in cases {
            t.add(format!("bad connect {} {what}", v.label()), |s| {
                let bytes = build(s);
                s.send(0, bytes);
                s.gone(0);
            });
        }
    }
    let wrong_protocols: [(&str, &str, u8); 5] = [
        ("name MQTX level 4", "MQTX", 4),
        ("name MQTT level 6", "MQTT", 6),
        ("name MQTT level 3", "MQTT", 3),
        ("name MQIsdp level 4", "MQIsdp", 4),
        ("name MQTT level 0", "MQTT", 0),
    ];
    for (what, name, level) in wrong_protocols {
        t.add(format!("bad connect {what}"), |s| {
            let mut body = mqtt_string(name);
            body.extend([level, 0x02, 0, 60]);
            body.extend(mqtt_string(&s.id(0)));
            s.send(0, raw_packet(0x10, &body));
            s.gone(0);
        });
    }
    for v in V311_AND_V5 {
        t.add(format!("bad connect {} PUBLISH before CONNECT", v.label()), |s| {
            let topic = s.topic("t");
            s.send(0, publish(v, &topic, 0, false, 0, &[], "m"));
            s.gone(0);
        });
        t.add(format!("bad connect {} PINGREQ before CONNECT", v.label()), |s| {
            s.send(0, pingreq());
            s.gone(0);
        });
        t.add(format!("bad connect {} second CONNECT", v.label()), |s| {
            s.connect(0, v);
            let again = Connect::new(v, &s.id(0)).bytes();
            s.send(0, again);
            s.gone(0);
        });
    }
}

/// PUBLISH from every version at every QoS, retained or not, to a subscriber of every version
/// at every QoS; a later subscriber gets the retained copy.
fn deliveries(t: &mut Table) {
    let pairs =
        [(V::V311, V::V311), (V::V5, V::V5), (V::V311, V::V5), (V::V5, V::V311), (V::V31, V::V311)];
    for (pv, sv) in pairs {
        for pub_qos in 0..3 {
            for sub_qos in 0..3 {
                for retain in [false, true] {
                    let name = format!(
                        "deliver {} QoS {pub_qos} retain={retain} to {} QoS {sub_qos}",
                        pv.label(),
                        sv.label()
                    );
                    t.add(name, |s| {
                        let topic = s.topic("t");
                        s.connect(1, sv);
                        s.subscribe(1, sv, &topic, sub_qos);
                        s.connect(0, pv);
                        s.publish(0, pv, &topic, pub_qos, retain, &[]);
                        s.receive(1, pub_qos.min(sub_qos), 1);
                        s.quiet(1);
                        if retain {
                            s.connect(2, sv);
                            s.send(2, subscribe(sv, 1, &[], &[(&topic, sub_qos)]));
                            s.recv(2, 1);
                            s.receive(2, pub_qos.min(sub_qos), 1);
                            s.quiet(2);
                        }
                        s.bye(0, pv);
                        s.bye(1, sv);
                    });
                }
            }
        }
    }
    t.add("deliver v5 with every PUBLISH property".into(), |s| {
        let topic = s.topic("t");
        let props = vec![
            Prop::byte(0x01, 1),
            Prop::u32(0x02, 3600),
            Prop::text(0x03, "text/plain"),
            Prop::text(0x08, "d/reply"),
            Prop::text(0x09, "corr"),
            Prop::pair("a", "1"),
            Prop::pair("b", "2"),
        ];
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 1);
        s.connect(0, V::V5);
        s.publish(0, V::V5, &topic, 1, false, &props);
        s.receive(1, 1, 1);
        s.connect(2, V::V311);
        s.subscribe(2, V::V311, &topic, 1);
        s.publish(0, V::V5, &topic, 1, false, &props);
        s.receive(1, 1, 2);
        s.receive(2, 1, 1);
    });
    t.add("deliver v5 with a subscription identifier, user property, expiry, format".into(), |s| {
        let topic = s.topic("t");
        s.connect(1, V::V5);
        s.send(1, subscribe(V::V5, 1, &[Prop::varint(0x0b, 5)], &[(&topic, 0)]));
        s.recv(1, 1);
        s.connect(0, V::V5);
        let props = [Prop::byte(0x01, 1), Prop::u32(0x02, 100), Prop::pair("a", "b")];
        s.publish(0, V::V5, &topic, 0, false, &props);
        s.recv(1, 1);
    });
    t.add("deliver an empty payload and a 300-byte one".into(), |s| {
        let topic = s.topic("t");
        s.connect(1, V::V311);
        s.subscribe(1, V::V311, &topic, 0);
        s.connect(0, V::V311);
        s.send(0, publish(V::V311, &topic, 0, false, 0, &[], ""));
        s.send(0, publish(V::V311, &topic, 0, false, 0, &[], &"x".repeat(300)));
        s.recv(1, 2);
    });
}

/// A retained message and 5.0 subscription options: retain handling and retain as published.
fn retained_on_subscribe(t: &mut Table) {
    for retained_qos in 0..3 {
        for retain_handling in 0..3u8 {
            for as_published in [false, true] {
                let name = format!(
                    "retained QoS {retained_qos} to v5 subscriber retain handling {retain_handling} \
                     retain as published={as_published}"
                );
                t.add(name, |s| {
                    let topic = s.topic("t");
                    s.connect(0, V::V5);
                    s.publish(0, V::V5, &topic, retained_qos, true, &[]);
                    // A QoS 0 PUBLISH has no answer: the PINGRESP behind it says the broker
                    // has routed it, so it is retained before the SUBSCRIBE, not delivered
                    // live because it was read after it (two clients are two queues).
                    s.probe(0);
                    let options = 2 | u8::from(as_published) << 3 | retain_handling << 4;
                    s.connect(1, V::V5);
                    s.send(1, subscribe(V::V5, 1, &[], &[(&topic, options)]));
                    s.recv(1, 1);
                    s.quiet(1);
                    s.send(1, subscribe(V::V5, 2, &[], &[(&topic, options)]));
                    s.recv(1, 1);
                    s.quiet(1);
                    s.publish(0, V::V5, &topic, retained_qos, true, &[]);
                    s.quiet(1);
                });
            }
        }
    }
    for v in V311_AND_V5 {
        t.add(format!("retained {} cleared by an empty payload", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.publish(0, v, &topic, 1, true, &[]);
            s.send(0, publish(v, &topic, 1, true, 2, &[], ""));
            s.recv(0, 1);
            s.connect(1, v);
            s.subscribe(1, v, &topic, 1);
            s.quiet(1);
        });
        t.add(format!("retained {} to a wildcard subscriber, several topics", v.label()), |s| {
            let (a, b) = (s.topic("r/a"), s.topic("r/b"));
            let all = s.topic("r/+");
            s.connect(0, v);
            s.publish(0, v, &a, 0, true, &[]);
            s.publish(0, v, &b, 0, true, &[]);
            s.probe(0);
            s.connect(1, v);
            s.subscribe(1, v, &all, 0);
            s.recv(1, 2);
        });
    }
}

/// No local, subscription identifiers, shared subscriptions, overlapping filters.
fn subscription_options(t: &mut Table) {
    for no_local in [false, true] {
        for sub_qos in 0..3 {
            for pub_qos in 0..3 {
                let name = format!("v5 no local={no_local} QoS {pub_qos} to own QoS {sub_qos}");
                t.add(name, |s| {
                    let topic = s.topic("t");
                    s.connect(0, V::V5);
                    s.subscribe(0, V::V5, &topic, sub_qos | u8::from(no_local) << 2);
                    s.send(0, publish(V::V5, &topic, pub_qos, false, 7, &[], "m"));
                    s.recv(0, usize::from(pub_qos > 0) + usize::from(!no_local));
                    if pub_qos == 2 {
                        s.send(0, ack(PUBREL, 7));
                        s.recv(0, 1);
                    }
                    s.quiet(0);
                });
            }
        }
    }
    for id in [1u32, 300, 268_435_455] {
        t.add(format!("v5 subscription identifier {id}"), |s| {
            let topic = s.topic("t");
            s.connect(1, V::V5);
            s.send(1, subscribe(V::V5, 1, &[Prop::varint(0x0b, id)], &[(&topic, 1)]));
            s.recv(1, 1);
            s.connect(0, V::V5);
            s.publish(0, V::V5, &topic, 1, true, &[]);
            s.receive(1, 1, 1);
            s.connect(2, V::V5);
            s.send(2, subscribe(V::V5, 1, &[Prop::varint(0x0b, id)], &[(&topic, 1)]));
            s.recv(2, 2);
        });
    }
    t.add("v5 subscription identifier 0".into(), |s| {
        let topic = s.topic("t");
        s.connect(0, V::V5);
        s.send(0, subscribe(V::V5, 1, &[Prop::varint(0x0b, 0)], &[(&topic, 1)]));
        s.gone(0);
    });
    for v in V311_AND_V5 {
        for (what, second) in [("the same filter twice", "t"), ("overlapping filters", "+")] {
            t.add(format!("{} {what}", v.label()), |s| {
                let (topic, other) = (s.topic("t"), s.topic(second));
                s.connect(1, v);
                let props: Vec<Prop> =
                    if v.is_5() { vec![Prop::varint(0x0b, 1)] } else { Vec::new() };
                s.send(1, subscribe(v, 1, &props, &[(&topic, 0)]));
                s.recv(1, 1);
                let props: Vec<Prop> =
                    if v.is_5() { vec![Prop::varint(0x0b, 2)] } else { Vec::new() };
                s.send(1, subscribe(v, 2, &props, &[(&other, 1)]));
                s.recv(1, 1);
                s.connect(0, v);
                s.publish(0, v, &topic, 1, false, &[]);
                s.recv(1, 1);
                s.quiet(1);
            });
        }
        t.add(format!("{} several filters in one SUBSCRIBE", v.label()), |s| {
            let (a, b, c) = (s.topic("a"), s.topic("b/#"), s.topic("c/+"));
            s.connect(0, v);
            s.send(0, subscribe(v, 9, &[], &[(&a, 0), (&b, 1), (&c, 2)]));
            s.recv(0, 1);
        });
        t.add(format!("{} shared subscription", v.label()), |s| {
            let topic = s.topic("t");
            let shared = format!("$share/g/{topic}");
            s.connect(1, v);
            s.subscribe(1, v, &shared, 1);
            s.connect(0, v);
            s.publish(0, v, &topic, 1, true, &[]);
            s.receive(1, 1, 1);
            s.connect(2, v);
            s.subscribe(2, v, &shared, 1);
            s.quiet(2);
        });
        for bad in ["$share/g", "$share//t", "$share/g+/t", "$share/g#/t"] {
            t.add(format!("{} shared subscription {bad}", v.label()), |s| {
                s.connect(0, v);
                s.send(0, subscribe(v, 1, &[], &[(bad, 1)]));
                s.gone(0);
            });
        }
    }
    t.add("v5 shared subscription with no local".into(), |s| {
        let shared = format!("$share/g/{}", s.topic("t"));
        s.connect(0, V::V5);
        s.send(0, subscribe(V::V5, 1, &[], &[(&shared, 1 | 4)]));
        s.gone(0);
    });
}

/// Filters and topics, valid and not, with wildcards where they belong and where they do not.
fn filters_and_topics(t: &mut Table) {
    for v in V311_AND_V5 {
        for filter in ["+", "#", "+/x", "a#", "#/b", "a+", "", "+/+/#", "/", "//"] {
            t.add(format!("{} subscribe to `d/<n>/{filter}`", v.label()), |s| {
                let filter = s.topic(filter);
                s.connect(0, v);
                s.send(0, subscribe(v, 1, &[], &[(&filter, 1)]));
                s.recv(0, 1);
                s.probe(0);
            });
        }
        t.add(format!("{} subscribe to an empty filter", v.label()), |s| {
            s.connect(0, v);
            s.send(0, subscribe(v, 1, &[], &[("", 1)]));
            s.gone(0);
        });
        for topic in ["+", "#", "a+", ""] {
            t.add(format!("{} publish to `d/<n>/{topic}`", v.label()), |s| {
                let topic = s.topic(topic);
                s.connect(0, v);
                s.send(0, publish(v, &topic, 1, false, 1, &[], "m"));
                s.recv(0, 1);
                s.probe(0);
            });
        }
        t.add(format!("{} publish to an empty topic", v.label()), |s| {
            s.connect(0, v);
            s.send(0, publish(v, "", 1, false, 1, &[], "m"));
            s.gone(0);
        });
        t.add(format!("{} publish to $SYS", v.label()), |s| {
            s.connect(0, v);
            s.send(0, publish(v, "$SYS/differential", 1, false, 1, &[], "m"));
            s.recv(0, 1);
            s.probe(0);
        });
        t.add(format!("{} `+` does not match a $ level", v.label()), |s| {
            let dollar = format!("${}", s.topic("t"));
            let wildcard = format!("+/{}/t", s.n);
            s.connect(1, v);
            s.subscribe(1, v, &wildcard, 0);
            s.connect(0, v);
            s.publish(0, v, &dollar, 1, false, &[]);
            s.connect(2, v);
            s.subscribe(2, v, &dollar, 0);
            s.publish(0, v, &dollar, 1, false, &[]);
            s.recv(2, 1);
        });
    }
}

fn unsubscribes(t: &mut Table) {
    for v in V311_AND_V5 {
        t.add(format!("{} unsubscribe a subscription", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.subscribe(0, v, &topic, 1);
            s.send(0, unsubscribe(v, 2, &[&topic]));
            s.recv(0, 1);
            s.publish(0, v, &topic, 1, false, &[]);
            s.quiet(0);
        });
        t.add(format!("{} unsubscribe what was never subscribed", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.send(0, unsubscribe(v, 2, &[&topic]));
            s.recv(0, 1);
        });
        t.add(format!("{} unsubscribe two filters, one subscribed", v.label()), |s| {
            let (a, b) = (s.topic("a"), s.topic("b"));
            s.connect(0, v);
            s.subscribe(0, v, &a, 0);
            s.send(0, unsubscribe(v, 3, &[&b, &a]));
            s.recv(0, 1);
        });
        t.add(format!("{} unsubscribe an invalid filter", v.label()), |s| {
            let filter = s.topic("#/x");
            s.connect(0, v);
            s.send(0, unsubscribe(v, 3, &[&filter]));
            s.gone(0);
        });
        t.add(format!("{} unsubscribe no filter", v.label()), |s| {
            s.connect(0, v);
            s.send(0, unsubscribe(v, 3, &[]));
            s.gone(0);
        });
    }
}

/// A will at every QoS, retained or not, when the client vanishes; none after a DISCONNECT.
fn wills(t: &mut Table) {
    for v in V311_AND_V5 {
        for qos in 0..3 {
            for retain in [false, true] {
                t.add(format!("will {} QoS {qos} retain={retain}", v.label()), |s| {
                    let topic = s.topic("will");
                    s.connect(1, v);
                    s.subscribe(1, v, &topic, 2);
                    let will = Will {
                        topic: topic.clone(),
                        payload: "gone",
                        qos,
                        retain,
                        props: Vec::new(),
                    };
                    s.open(0, &Connect { will: Some(will), ..Connect::new(v, &s.id(0)) });
                    s.drop_socket(0);
                    s.receive(1, qos, 1);
                    if retain {
                        s.connect(2, v);
                        s.send(2, subscribe(v, 1, &[], &[(&topic, 0)]));
                        s.recv(2, 2);
                    }
                });
            }
        }
        t.add(format!("will {} not sent after DISCONNECT", v.label()), |s| {
            let topic = s.topic("will");
            s.connect(1, v);
            s.subscribe(1, v, &topic, 0);
            let will = Will { topic, payload: "gone", qos: 0, retain: false, props: Vec::new() };
            s.open(0, &Connect { will: Some(will), ..Connect::new(v, &s.id(0)) });
            s.bye(0, v);
            s.quiet(1);
        });
        t.add(format!("will {} sent when taken over", v.label()), |s| {
            let topic = s.topic("will");
            s.connect(1, v);
            s.subscribe(1, v, &topic, 0);
            let will = Will { topic, payload: "gone", qos: 0, retain: false, props: Vec::new() };
            let id = s.id(0);
            s.open(0, &Connect { will: Some(will), ..Connect::new(v, &id) });
            s.open(2, &Connect::new(v, &id));
            s.gone(0);
            s.recv(1, 1);
        });
    }
    t.add("will v5 sent after DISCONNECT with will (0x04)".into(), |s| {
        let topic = s.topic("will");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        let will = Will { topic, payload: "gone", qos: 0, retain: false, props: Vec::new() };
        s.open(0, &Connect { will: Some(will), ..Connect::new(V::V5, &s.id(0)) });
        s.send(0, disconnect(V::V5, 0x04));
        s.gone(0);
        s.recv(1, 1);
    });
    t.add("will v5 with every will property".into(), |s| {
        let topic = s.topic("will");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 1);
        let props = vec![
            Prop::u32(0x18, 0),
            Prop::byte(0x01, 1),
            Prop::u32(0x02, 600),
            Prop::text(0x03, "text/plain"),
            Prop::text(0x08, "d/reply"),
            Prop::text(0x09, "corr"),
            Prop::pair("w", "1"),
        ];
        let will = Will { topic, payload: "gone", qos: 1, retain: false, props };
        s.open(0, &Connect { will: Some(will), ..Connect::new(V::V5, &s.id(0)) });
        s.drop_socket(0);
        s.receive(1, 1, 1);
    });
    t.add("will v5 delayed 1 s, then sent".into(), |s| {
        let topic = s.topic("will");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        let will =
            Will { topic, payload: "gone", qos: 0, retain: false, props: vec![Prop::u32(0x18, 1)] };
        let connect = Connect {
            will: Some(will),
            props: vec![Prop::u32(0x11, 60)],
            ..Connect::new(V::V5, &s.id(0))
        };
        s.open(0, &connect);
        s.drop_socket(0);
        s.quiet(1);
        s.recv(1, 1);
    });
    t.add("will v5 delayed 5 s, not sent when the client is back".into(), |s| {
        let topic = s.topic("will");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        let will =
            Will { topic, payload: "gone", qos: 0, retain: false, props: vec![Prop::u32(0x18, 5)] };
        let connect = Connect {
            clean: false,
            will: Some(will),
            props: vec![Prop::u32(0x11, 60)],
            ..Connect::new(V::V5, &s.id(0))
        };
        s.open(0, &connect);
        s.drop_socket(0);
        s.open(
            2,
            &Connect {
                clean: false,
                props: vec![Prop::u32(0x11, 60)],
                ..Connect::new(V::V5, &s.id(0))
            },
        );
        s.quiet(1);
    });
}

/// Sessions that outlive their connection: queued messages, and in-flight ones sent again.
fn sessions(t: &mut Table) {
    for v in V311_AND_V5 {
        let persistent = |s: &Script| Connect {
            clean: false,
            props: if v.is_5() { vec![Prop::u32(0x11, 300)] } else { Vec::new() },
            ..Connect::new(v, &s.id(1))
        };
        for qos in 1..3 {
            t.add(format!("session {} queues QoS {qos} while away", v.label()), |s| {
                let topic = s.topic("t");
                let connect = persistent(s);
                s.open(1, &connect);
                s.subscribe(1, v, &topic, qos);
                s.bye(1, v);
                s.connect(0, v);
                s.publish(0, v, &topic, qos, false, &[]);
                s.send(0, publish(v, &topic, 0, false, 0, &[], "qos0"));
                s.probe(0);
                s.open(2, &connect);
                s.receive(2, qos, 1);
                s.quiet(2);
            });
            t.add(format!("session {} sends an unacknowledged QoS {qos} again", v.label()), |s| {
                let topic = s.topic("t");
                let connect = persistent(s);
                s.open(1, &connect);
                s.subscribe(1, v, &topic, qos);
                s.connect(0, v);
                s.publish(0, v, &topic, qos, false, &[]);
                s.recv(1, 1);
                s.drop_socket(1);
                s.open(2, &connect);
                s.receive(2, qos, 1);
                s.quiet(2);
            });
        }
        t.add(format!("session {} sends PUBREL again after PUBREC", v.label()), |s| {
            let topic = s.topic("t");
            let connect = persistent(s);
            s.open(1, &connect);
            s.subscribe(1, v, &topic, 2);
            s.connect(0, v);
            s.publish(0, v, &topic, 2, false, &[]);
            s.recv(1, 1);
            s.send(1, ack(PUBREC, 1));
            s.recv(1, 1);
            s.drop_socket(1);
            s.open(2, &connect);
            s.recv(2, 1);
            s.send(2, ack(PUBCOMP, 1));
            s.quiet(2);
        });
        t.add(format!("session {} ends with a clean connection", v.label()), |s| {
            let topic = s.topic("t");
            let connect = persistent(s);
            s.open(1, &connect);
            s.subscribe(1, v, &topic, 1);
            s.bye(1, v);
            s.open(2, &Connect::new(v, &s.id(1)));
            s.bye(2, v);
            s.open(3, &connect);
        });
        t.add(format!("session {} keeps its QoS 2 id across a reconnect", v.label()), |s| {
            let connect = Connect { clean: false, ..persistent(s) };
            let topic = s.topic("t");
            s.open(1, &connect);
            s.send(1, publish(v, &topic, 2, false, 5, &[], "m"));
            s.recv(1, 1);
            s.drop_socket(1);
            s.open(2, &connect);
            s.send(2, ack(PUBREL, 5));
            s.recv(2, 1);
        });
    }
}

/// 5.0 topic aliases from the client: set, used, out of range, unknown.
fn topic_aliases(t: &mut Table) {
    t.add("topic alias set then used".into(), |s| {
        let topic = s.topic("t");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        s.connect(0, V::V5);
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[Prop::u16(0x23, 1)], "a"));
        s.send(0, publish(V::V5, "", 0, false, 0, &[Prop::u16(0x23, 1)], "b"));
        s.recv(1, 2);
    });
    for (what, alias) in [("0", 0u16), ("past the maximum", 11), ("65535", 65535)] {
        t.add(format!("topic alias {what}"), |s| {
            let topic = s.topic("t");
            s.connect(0, V::V5);
            s.send(0, publish(V::V5, &topic, 0, false, 0, &[Prop::u16(0x23, alias)], "a"));
            s.gone(0);
        });
    }
    t.add("topic alias unknown".into(), |s| {
        s.connect(0, V::V5);
        s.send(0, publish(V::V5, "", 0, false, 0, &[Prop::u16(0x23, 2)], "a"));
        s.gone(0);
    });
    t.add("topic alias to a subscriber that allows them".into(), |s| {
        let topic = s.topic("t");
        s.open(1, &Connect { props: vec![Prop::u16(0x22, 5)], ..Connect::new(V::V5, &s.id(1)) });
        s.subscribe(1, V::V5, &topic, 0);
        s.connect(0, V::V5);
        s.publish(0, V::V5, &topic, 0, false, &[]);
        s.publish(0, V::V5, &topic, 0, false, &[]);
        s.recv(1, 2);
    });
}

/// Flow control both ways, message expiry, packet size limits the client sets.
fn flow(t: &mut Table) {
    t.add("receive maximum 1 holds the second QoS 1 message".into(), |s| {
        let topic = s.topic("t");
        s.open(1, &Connect { props: vec![Prop::u16(0x21, 1)], ..Connect::new(V::V5, &s.id(1)) });
        s.subscribe(1, V::V5, &topic, 1);
        s.connect(0, V::V5);
        s.publish(0, V::V5, &topic, 1, false, &[]);
        s.send(0, publish(V::V5, &topic, 1, false, 2, &[], "n"));
        s.recv(0, 1);
        s.recv(1, 1);
        s.quiet(1);
        s.send(1, ack(PUBACK, 1));
        s.receive(1, 1, 2);
    });
    t.add("maximum packet size 20 drops a larger message".into(), |s| {
        let topic = s.topic("t");
        s.open(1, &Connect { props: vec![Prop::u32(0x27, 20)], ..Connect::new(V::V5, &s.id(1)) });
        s.subscribe(1, V::V5, &topic, 0);
        s.connect(0, V::V5);
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[], &"x".repeat(40)));
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[], "y"));
        s.recv(1, 1);
        s.quiet(1);
    });
    t.add("message expiry 3600 is sent on".into(), |s| {
        let topic = s.topic("t");
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        s.connect(0, V::V5);
        s.publish(0, V::V5, &topic, 0, false, &[Prop::u32(0x02, 3600)]);
        s.recv(1, 1);
    });
    t.add("message expiry 1 retained, gone after 2 s".into(), |s| {
        let topic = s.topic("t");
        s.connect(0, V::V5);
        s.publish(0, V::V5, &topic, 1, true, &[Prop::u32(0x02, 1)]);
        s.pause(2100);
        s.connect(1, V::V5);
        s.subscribe(1, V::V5, &topic, 0);
        s.quiet(1);
    });
    for v in V311_AND_V5 {
        t.add(format!("{} QoS 2 PUBLISH sent twice before PUBREL", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(1, v);
            s.subscribe(1, v, &topic, 0);
            s.connect(0, v);
            s.send(0, publish(v, &topic, 2, false, 3, &[], "m"));
            s.recv(0, 1);
            let mut again = publish(v, &topic, 2, false, 3, &[], "m");
            again[0] |= 0x08;
            s.send(0, again);
            s.recv(0, 1);
            s.send(0, ack(PUBREL, 3));
            s.recv(0, 1);
            s.recv(1, 1);
            s.quiet(1);
        });
        t.add(format!("{} PUBREL for an unknown id", v.label()), |s| {
            s.connect(0, v);
            s.send(0, ack(PUBREL, 9));
            s.recv(0, 1);
            s.probe(0);
        });
        t.add(format!("{} PUBACK, PUBREC and PUBCOMP for unknown ids", v.label()), |s| {
            s.connect(0, v);
            s.send(0, ack(PUBACK, 9));
            s.send(0, ack(PUBREC, 9));
            s.send(0, ack(PUBCOMP, 9));
            s.quiet(0);
            s.probe(0);
        });
    }
}

/// Malformed packets after a good CONNECT.
fn malformed(t: &mut Table) {
    for v in V311_AND_V5 {
        let props = properties(v, &[]);
        let cases: Vec<(&str, Packet<'_>)> = vec![
            (
                "SUBSCRIBE with flags 0",
                Box::new(|s| {
                    let mut p = subscribe(v, 1, &[], &[(&s.topic("t"), 0)]);
                    p[0] = 0x80;
                    p
                }),
            ),
            (
                "PUBLISH at QoS 3",
                Box::new(|s| {
                    let mut p = publish(v, &s.topic("t"), 2, false, 1, &[], "m");
                    p[0] |= 0x06;
                    p
                }),
            ),
            (
                "PUBLISH QoS 1 with packet id 0",
                Box::new(|s| publish(v, &s.topic("t"), 1, false, 0, &[], "m")),
            ),
            (
                "SUBSCRIBE with packet id 0",
                Box::new(|s| subscribe(v, 0, &[], &[(&s.topic("t"), 0)])),
            ),
            ("UNSUBSCRIBE with packet id 0", Box::new(|s| unsubscribe(v, 0, &[&s.topic("t")]))),
            ("PUBACK with packet id 0", Box::new(|_| ack(PUBACK, 0))),
            ("PUBREL with packet id 0", Box::new(|_| ack(PUBREL, 0))),
            ("SUBSCRIBE of no filter", Box::new(|_| subscribe(v, 1, &[], &[]))),
            ("SUBSCRIBE with QoS 3", Box::new(|s| subscribe(v, 1, &[], &[(&s.topic("t"), 3)]))),
            (
                "SUBSCRIBE with reserved option bits",
                Box::new(|s| subscribe(v, 1, &[], &[(&s.topic("t"), 0xc0)])),
            ),
            ("packet type 0", Box::new(|_| vec![0x00, 0x00])),
            ("AUTH", Box::new(|_| vec![0xf0, 0x00])),
            ("CONNACK from a client", Box::new(|_| vec![0x20, 0x02, 0, 0])),
            (
                "remaining length of five bytes",
                Box::new(|_| vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            ),
            (
                "PUBLISH topic not UTF-8",
                Box::new(|_| {
                    raw_packet(0x30, &[[0u8, 2, 0xc3, 0x28].as_slice(), &props, b"m"].concat())
                }),
            ),
            (
                "PUBLISH topic with U+0000",
                Box::new(|s| publish(v, &format!("{}\0", s.topic("t")), 0, false, 0, &[], "m")),
            ),
            ("PUBLISH shorter than its topic", Box::new(|_| raw_packet(0x30, &[0, 9, b'a']))),
            ("PINGREQ with a body", Box::new(|_| vec![0xc0, 0x01, 0x00])),
            ("DISCONNECT with flags", Box::new(|_| vec![0xe1, 0x00])),
        ];
        broken_after_connect(t, v, cases);
    }
    let v5_cases: Vec<(&str, Packet<'_>)> = vec![
        (
            "PUBLISH with an unknown property",
            Box::new(|s| publish(V::V5, &s.topic("t"), 0, false, 0, &[Prop::byte(0x7f, 1)], "m")),
        ),
        (
            "PUBLISH with a CONNECT property",
            Box::new(|s| publish(V::V5, &s.topic("t"), 0, false, 0, &[Prop::u32(0x11, 1)], "m")),
        ),
        (
            "PUBLISH with a subscription identifier",
            Box::new(|s| publish(V::V5, &s.topic("t"), 0, false, 0, &[Prop::varint(0x0b, 1)], "m")),
        ),
        (
            "PUBLISH payload format 1, payload not UTF-8",
            Box::new(|s| {
                let mut p = publish(V::V5, &s.topic("t"), 1, false, 1, &[Prop::byte(0x01, 1)], "m");
                let last = p.len() - 1;
                p[last] = 0xff;
                p
            }),
        ),
        (
            "PUBLISH property length past the packet",
            Box::new(|s| {
                let mut body = mqtt_string(&s.topic("t"));
                body.extend(varint(50));
                raw_packet(0x30, &body)
            }),
        ),
        (
            "PUBLISH user property not UTF-8",
            Box::new(|s| {
                let mut body = mqtt_string(&s.topic("t"));
                body.extend([7, 0x26, 0, 1, 0xff, 0, 1, b'v']);
                raw_packet(0x30, &body)
            }),
        ),
        (
            "DISCONNECT with session expiry after 0",
            Box::new(|_| raw_packet(0xe0, &[0, 5, 0x11, 0, 0, 0, 9])),
        ),
        ("DISCONNECT with an unknown reason", Box::new(|_| raw_packet(0xe0, &[0x03, 0]))),
        ("AUTH with a method", Box::new(|_| raw_packet(0xf0, &[0x18, 4, 0x15, 0, 1, b'x']))),
        (
            "SUBSCRIBE with retain handling 3",
            Box::new(|s| subscribe(V::V5, 1, &[], &[(&s.topic("t"), 0x30)])),
        ),
    ];
    broken_after_connect(t, V::V5, v5_cases);
}

/// For each case, a client connects, sends the case's packet and waits for the close.
fn broken_after_connect(t: &mut Table, v: V, cases: Vec<(&str, Packet<'_>)>) {
    for (what, build) in cases {
        t.add(format!("malformed {} {what}", v.label()), |s| {
            s.connect(0, v);
            let bytes = build(s);
            s.send(0, bytes);
            s.gone(0);
        });
    }
}

/// The user `u` may read `d/<n>/ro/...`, write `d/<n>/wo/...` and do both under `d/<n>/rw/...`.
const ACL: &str = "user u\ntopic read d/+/ro/#\ntopic write d/+/wo/#\ntopic readwrite d/+/rw/#\n";

/// CONNECT with good, wrong and missing credentials.
fn credentials(t: &mut Table) {
    let cases: [(&str, Option<&'static str>, Option<&'static str>); 5] = [
        ("no credentials", None, None),
        ("right password", Some("u"), Some("p")),
        ("wrong password", Some("u"), Some("x")),
        ("unknown user", Some("who"), Some("p")),
        ("user without password", Some("u"), None),
    ];
    for v in VERSIONS {
        for (what, username, password) in cases {
            t.add(format!("credentials {} {what}", v.label()), |s| {
                s.open(0, &Connect { username, password, ..Connect::new(v, &s.id(0)) });
                s.probe(0);
            });
        }
    }
}

/// What the ACL lets the user read and write, at every QoS, with the answers for the rest.
fn access(t: &mut Table) {
    let user = |v: V, id: String| Connect {
        username: Some("u"),
        password: Some("p"),
        ..Connect::new(v, &id)
    };
    for v in V311_AND_V5 {
        for area in ["ro", "wo", "rw", "none"] {
            for qos in 0..3 {
                t.add(format!("access {} publish QoS {qos} to {area}", v.label()), |s| {
                    let topic = s.topic(&format!("{area}/x"));
                    let all = s.topic("+/x");
                    s.open(1, &user(v, s.id(1)));
                    s.subscribe(1, v, &all, 2);
                    s.open(0, &user(v, s.id(0)));
                    s.publish(0, v, &topic, qos, true, &[]);
                    s.quiet(1);
                    s.probe(0);
                });
            }
            t.add(format!("access {} subscribe to {area}", v.label()), |s| {
                let topic = s.topic(&format!("{area}/x"));
                s.open(0, &user(v, s.id(0)));
                s.send(
                    0,
                    subscribe(v, 1, &[], &[(&topic, 1), (&s.topic(&format!("{area}/#")), 2)]),
                );
                s.recv(0, 1);
                s.probe(0);
            });
        }
    }
}

/// `max_packet_size`, `max_inflight_messages`, `max_queued_messages`, `max_topic_alias`:
/// announced, and enforced both ways.
fn limits(t: &mut Table) {
    for v in VERSIONS {
        t.add(format!("limits {} CONNACK", v.label()), |s| {
            s.connect(0, v);
            s.probe(0);
        });
        t.add(format!("limits {} PUBLISH over max_packet_size", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.send(0, publish(v, &topic, 0, false, 0, &[], &"x".repeat(150)));
            s.gone(0);
        });
        t.add(format!("limits {} queue of 2 for a client away", v.label()), |s| {
            let topic = s.topic("t");
            let props = if v.is_5() { vec![Prop::u32(0x11, 300)] } else { Vec::new() };
            let away = Connect { clean: false, props, ..Connect::new(v, &s.id(1)) };
            s.open(1, &away);
            s.subscribe(1, v, &topic, 1);
            s.bye(1, v);
            s.connect(0, v);
            for id in 1..=4 {
                s.send(0, publish(v, &topic, 1, false, id, &[], "m"));
                s.recv(0, 1);
            }
            s.open(2, &away);
            s.recv(2, 2);
            s.quiet(2);
        });
        t.add(format!("limits {} 2 in flight to a subscriber", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(1, v);
            s.subscribe(1, v, &topic, 1);
            s.connect(0, v);
            for id in 1..=3 {
                s.send(0, publish(v, &topic, 1, false, id, &[], "m"));
                s.recv(0, 1);
            }
            s.recv(1, 2);
            s.quiet(1);
            s.send(1, ack(PUBACK, 1));
            s.recv(1, 1);
        });
    }
    t.add("limits v5 receive maximum 2 exceeded".into(), |s| {
        let topic = s.topic("t");
        s.connect(0, V::V5);
        for id in 1..=3 {
            s.send(0, publish(V::V5, &topic, 2, false, id, &[], "m"));
        }
        s.recv(0, 2);
        s.gone(0);
    });
    t.add("limits v5 topic alias past max_topic_alias".into(), |s| {
        let topic = s.topic("t");
        s.connect(0, V::V5);
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[Prop::u16(0x23, 4)], "m"));
        s.gone(0);
    });
    t.add("limits v5 subscriber's maximum packet size below the broker's".into(), |s| {
        let topic = s.topic("t");
        s.open(1, &Connect { props: vec![Prop::u32(0x27, 30)], ..Connect::new(V::V5, &s.id(1)) });
        s.subscribe(1, V::V5, &topic, 0);
        s.connect(0, V::V5);
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[], &"x".repeat(50)));
        s.send(0, publish(V::V5, &topic, 0, false, 0, &[], "y"));
        s.recv(1, 1);
    });
}

/// `max_qos 1` and `retain_available false`: what a client is told, and what it is refused.
fn downgrades(t: &mut Table) {
    for v in VERSIONS {
        t.add(format!("downgrades {} CONNACK", v.label()), |s| {
            s.connect(0, v);
            s.probe(0);
        });
        t.add(format!("downgrades {} subscribe at QoS 2", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.subscribe(0, v, &topic, 2);
        });
        t.add(format!("downgrades {} publish at QoS 2", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.send(0, publish(v, &topic, 2, false, 1, &[], "m"));
            s.gone(0);
        });
        t.add(format!("downgrades {} publish retained", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(0, v);
            s.send(0, publish(v, &topic, 1, true, 1, &[], "m"));
            s.gone(0);
        });
        t.add(format!("downgrades {} QoS 1 delivered to a QoS 2 subscription", v.label()), |s| {
            let topic = s.topic("t");
            s.connect(1, v);
            s.subscribe(1, v, &topic, 2);
            s.connect(0, v);
            s.publish(0, v, &topic, 1, false, &[]);
            s.receive(1, 1, 1);
        });
    }
}
