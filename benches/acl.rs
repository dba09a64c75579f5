//! The ACL file's check, made on every PUBLISH and (with an ACL file) every delivery: a user
//! with 100, 10,000 or 100,000 wildcard rules, plus a few patterns for every client.
//! Run: `cargo bench --bench acl`.

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culex::auth::{Access, AclFile, Identity};

/// One user's rules shaped as a site's: each device may write under its own branch and read
/// its commands, with `+` and `#`; then the patterns every client gets.
fn acl_text(rules: usize) -> String {
    let mut text = String::from("user backend\n");
    for i in 0..rules / 2 {
        let _ = writeln!(text, "topic write site/{}/dev/{i}/#", i % 100);
        let _ = writeln!(text, "topic read site/{}/+/{i}/cmd", i % 100);
    }
    text.push_str("pattern readwrite clients/%c/#\npattern read users/%u/+/inbox\n");
    text
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("acl_check");
    group.throughput(Throughput::Elements(1));
    for rules in [100, 10_000, 100_000] {
        let acl = AclFile::parse(&acl_text(rules), Path::new("bench.acl")).expect("valid");
        let who = Identity { client_id: "backend-1", username: Some("backend") };
        let topics: Vec<String> = (0..1024)
            .map(|i| {
                let device = i * 37 % (rules / 2);
                format!("site/{}/dev/{device}/telemetry", device % 100)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(rules), &topics, |b, topics| {
            let mut next = 0;
            b.iter(|| {
                next = (next + 1) % topics.len();
                black_box(acl.allows(who, &topics[next], Access::Write))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
