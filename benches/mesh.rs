//! Cross-shard queue throughput: one executor sends to another through the channel mesh the
//! shards use (bounded SPSC, `BATCHES_IN_FLIGHT_MAX` batches in flight), one message per send
//! or batched as the shards' flusher batches them. Each message is an `Arc`, as a routed
//! PUBLISH is. Run: `cargo bench --bench mesh`.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use culex::runtime::bench::{executor, BATCHES_IN_FLIGHT_MAX};
use glommio::channels::channel_mesh::MeshBuilder;

/// Messages per measurement: enough that executor start-up is outside the measured span.
const MESSAGES: u64 = 200_000;

type Message = Arc<[u8; 64]>;

/// Sends `MESSAGES` in batches of `batch` from one executor to another; returns the time from
/// both having joined the mesh to the last message received.
fn send_across(batch: usize) -> Duration {
    let mesh = MeshBuilder::<Vec<Message>, _>::full(2, BATCHES_IN_FLIGHT_MAX);
    let (elapsed_tx, elapsed_rx) = mpsc::channel();
    let sender_mesh = mesh.clone();
    let sender = executor("bench-sender")
        .spawn(move || async move {
            let (senders, _) = sender_mesh.join().await.expect("joined the mesh");
            let message: Message = Arc::new([7; 64]);
            let mut sent = 0;
            while sent < MESSAGES {
                let n = batch.min((MESSAGES - sent) as usize);
                let batch: Vec<Message> = (0..n).map(|_| message.clone()).collect();
                senders.send_to(1, batch).await.expect("receiver alive");
                sent += n as u64;
            }
        })
        .expect("sender executor");
    let receiver = executor("bench-receiver")
        .spawn(move || async move {
            let (_, mut receivers) = mesh.join().await.expect("joined the mesh");
            let started = Instant::now();
            let mut received = 0;
            let (_, stream) = receivers.streams().pop().expect("one peer");
            while received < MESSAGES {
                received += stream.recv().await.expect("sender alive").len() as u64;
            }
            elapsed_tx.send(started.elapsed()).expect("bench waits");
        })
        .expect("receiver executor");
    sender.join().expect("sender ran");
    receiver.join().expect("receiver ran");
    elapsed_rx.recv().expect("measured")
}

fn cross_shard(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard_queue");
    group.throughput(Throughput::Elements(MESSAGES));
    group.sample_size(20);
    for batch in [1, 16, 64] {
        group.bench_function(BenchmarkId::new("batch", batch), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| send_across(batch)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, cross_shard);
criterion_main!(benches);
