//! Codec throughput: decode and encode of the packets on the message path, per version.
//! Run: `cargo bench --bench codec`.

use std::hint::black_box;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use culex::protocol::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
    TopicFilter, TopicName, PACKET_SIZE_MAX,
};

fn publish(payload_len: usize, version: ProtocolVersion) -> Packet {
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.message_expiry_interval = Some(60);
        properties.user_properties.push(("origin".into(), "bench".into()));
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new("sensor/room1/temperature").expect("valid topic"),
        packet_id: NonZeroU16::new(42),
        properties,
        payload: Bytes::from(vec![0xA5; payload_len]),
    })
}

fn subscribe() -> Packet {
    let filters = ["sensor/+/temperature", "myhouse/room1/#", "$share/g/a/b"]
        .into_iter()
        .map(|f| {
            let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
            (TopicFilter::new(f).expect("valid filter"), options)
        })
        .collect();
    Packet::Subscribe(Subscribe {
        packet_id: NonZeroU16::new(7).expect("non-zero"),
        properties: Properties::default(),
        filters,
    })
}

fn connect(version: ProtocolVersion) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        bridge: false,
        clean_start: true,
        keep_alive_secs: 60,
        properties: Properties::default(),
        client_id: "bench-client-0001".into(),
        will: None,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
    }))
}

fn bench_packet(c: &mut Criterion, name: &str, packet: &Packet, version: ProtocolVersion) {
    let mut wire = BytesMut::new();
    packet.encode(version, &mut wire);
    let wire = wire.freeze();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&wire[..]),
            |buf| black_box(Packet::decode(buf, version, PACKET_SIZE_MAX)),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut out = BytesMut::with_capacity(wire.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(packet).encode(version, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let v = if version.is_v5() { "v5" } else { "v311" };
        for payload_len in [16, 256, 4096] {
            let name = format!("publish_{payload_len}B_{v}");
            bench_packet(c, &name, &publish(payload_len, version), version);
        }
        bench_packet(c, &format!("subscribe_{v}"), &subscribe(), version);
        bench_packet(c, &format!("connect_{v}"), &connect(version), version);
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
