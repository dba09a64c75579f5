//! Subscription-trie matching with 10k, 100k and 1M filters, and the retained store's lookup
//! for a new subscription (100k retained topics: the trie's walk against the scan it replaced).
//! Run: `cargo bench --bench trie`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culex::protocol::filter_matches;
use culex::protocol::trie::TopicTrie;

/// A mix shaped like a device fleet: mostly exact topics, some `+` and `#` filters.
fn filters(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| match i % 10 {
            0 => format!("fleet/{}/+/status", i % 1000),
            1 => format!("fleet/{}/#", i % 5000),
            _ => format!("fleet/{}/device/{i}/telemetry", i % 1000),
        })
        .collect()
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_match");
    group.throughput(Throughput::Elements(1));
    for count in [10_000, 100_000, 1_000_000] {
        let mut trie = TopicTrie::default();
        for (i, filter) in filters(count).iter().enumerate() {
            *trie.entry(filter, || 0usize) = i;
        }
        let topics: Vec<String> =
            (0..1024).map(|i| format!("fleet/{}/device/{}/telemetry", i % 1000, i * 7)).collect();
        group.bench_with_input(BenchmarkId::from_parameter(count), &topics, |b, topics| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % topics.len();
                let mut hits = 0;
                trie.matches(&topics[next], |_| hits += 1);
                black_box(hits)
            })
        });
    }
    group.finish();
}

/// One new subscription against 100k retained topics (a fleet's last values): what each
/// filter matches, found by walking the trie of topic names or by checking every topic.
fn retained_lookup(c: &mut Criterion) {
    let topics: Vec<String> = (0..100_000)
        .map(|i| format!("fleet/{}/device/{i}/{}", i % 1000, ["status", "telemetry"][i % 2]))
        .collect();
    let mut trie = TopicTrie::default();
    for topic in &topics {
        *trie.entry(topic, || 0usize) = topic.len();
    }
    let mut group = c.benchmark_group("retained_lookup_100k");
    for filter in ["fleet/7/device/7007/status", "fleet/7/#", "fleet/+/device/+/status"] {
        group.bench_with_input(BenchmarkId::new("trie", filter), filter, |b, filter| {
            b.iter(|| {
                let mut hits = 0;
                trie.matched_by(filter, |_| hits += 1);
                black_box(hits)
            })
        });
        group.bench_with_input(BenchmarkId::new("scan", filter), filter, |b, filter| {
            b.iter(|| black_box(topics.iter().filter(|t| filter_matches(filter, t)).count()))
        });
    }
    group.finish();
}

criterion_group!(benches, matching, retained_lookup);
criterion_main!(benches);
