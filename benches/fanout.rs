//! Fan-out: one QoS 0 PUBLISH delivered to many subscribers of its topic on one shard, through
//! the shard's real delivery path (trie match, per-client dedup, per-subscriber encoding into
//! each connection's outbox). Run: `cargo bench --bench fanout`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culex::runtime::bench::FanOut;

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out_qos0_64B");
    for subscribers in [10, 100, 1_000] {
        let mut fan_out = FanOut::new(subscribers, 64);
        // Throughput counts deliveries: one message to `subscribers` clients.
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::from_parameter(subscribers), |b| {
            b.iter(|| black_box(fan_out.publish_once()))
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
