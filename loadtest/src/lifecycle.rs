//! The scenarios that open and close connections rather than move messages: `connections`
//! holds N idle clients and reads what they cost the broker in memory; `churn` loops clients
//! through connect, subscribe and disconnect; `handshakes` loops them through connect and
//! disconnect (TLS handshakes with `--tls`) while a bystander times its round trips. All are
//! bounded by the run's duration.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex::protocol::{Packet, QoS, TopicName};
use hdrhistogram::Histogram;

use crate::accounting::latency_histogram;
use crate::broker::resident_kb;
use crate::client::Connection;
use crate::progress;
use crate::scenario::{Outcome, Params, Percentiles};

/// Threads that open the idle connections (the broker accepts them in parallel).
const OPENERS: usize = 4;
/// Time for the broker to finish setting up the last connections before its memory is read.
const SETTLE: Duration = Duration::from_secs(1);

/// What a group of client threads counted.
struct Counts {
    attempted: u64,
    succeeded: u64,
    measured: u64,
    latency_ns: Histogram<u64>,
    first_error: Option<anyhow::Error>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            attempted: 0,
            succeeded: 0,
            measured: 0,
            latency_ns: latency_histogram(),
            first_error: None,
        }
    }

    fn merge(&mut self, other: Counts) {
        self.attempted += other.attempted;
        self.succeeded += other.succeeded;
        self.measured += other.measured;
        self.latency_ns.add(&other.latency_ns).expect("same bounds");
        self.first_error = self.first_error.take().or(other.first_error);
    }

    /// Records one attempt that began at `began` and took `took` (or failed).
    fn record(
        &mut self,
        result: anyhow::Result<()>,
        began: Instant,
        took: Duration,
        from: Instant,
    ) {
        self.attempted += 1;
        match result {
            Ok(()) => {
                self.succeeded += 1;
                if began >= from {
                    self.measured += 1;
                    let _ = self.latency_ns.record(took.as_nanos().max(1) as u64);
                }
            }
            Err(error) => {
                self.first_error.get_or_insert(error);
            }
        }
    }

    /// The outcome; an error if nothing succeeded.
    fn outcome(self, broker: &str, params: &Params, seconds: f64) -> anyhow::Result<Outcome> {
        if let (0, Some(error)) = (self.succeeded, &self.first_error) {
            anyhow::bail!("every attempt failed; the first: {error:#}");
        }
        if let Some(error) = &self.first_error {
            eprintln!(
                "{broker}: {} of {} attempts failed; the first: {error:#}",
                self.attempted - self.succeeded,
                self.attempted
            );
        }
        let mut outcome = Outcome::new(broker, params, &self.latency_ns);
        outcome.sent = self.attempted;
        outcome.expected = self.attempted;
        outcome.received = self.succeeded;
        outcome.lost = self.attempted - self.succeeded;
        outcome.seconds = seconds;
        outcome.msgs_per_sec = self.measured as f64 / seconds.max(1e-9);
        Ok(outcome)
    }
}

/// Opens `clients` connections (stopping at the run's duration), waits for the broker to
/// settle, and reads how much its resident memory grew per connection; then closes them all.
pub fn idle_connections(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    let before_kb = params.broker_pid.and_then(resident_kb);
    let run_id = std::process::id();
    let deadline = Instant::now() + params.total_duration();
    let opened = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let measured_from = start + params.warmup;
    let per_opener = params.clients.div_ceil(OPENERS);
    let (connections, counts) = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..OPENERS)
            .map(|opener| {
                let (first, opened) = (opener * per_opener, &opened);
                let last = (first + per_opener).min(params.clients);
                scope.spawn(move || {
                    let mut counts = Counts::new();
                    let mut open = Vec::with_capacity(last.saturating_sub(first));
                    for i in first..last {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let began = Instant::now();
                        let id = format!("lt-{run_id}-i{i}");
                        let result = Connection::open_light(&params.target, &id, params.version);
                        let took = began.elapsed();
                        let result = result.map(|connection| open.push(connection));
                        counts.record(result, began, took, measured_from);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    (open, counts)
                })
            })
            .collect();
        scope.spawn(|| progress::show(broker, params.total_duration(), &opened, &done));
        let mut connections = Vec::new();
        let mut counts = Counts::new();
        for opener in openers {
            let (open, opener_counts) = opener.join().expect("opener thread");
            connections.extend(open);
            counts.merge(opener_counts);
        }
        done.store(true, Ordering::Release);
        (connections, counts)
    });
    let seconds = start.elapsed().saturating_sub(params.warmup).as_secs_f64();
    std::thread::sleep(SETTLE);
    let after_kb = params.broker_pid.and_then(resident_kb);
    let open = connections.len();
    for connection in connections {
        connection.disconnect();
    }
    let mut outcome = counts.outcome(broker, params, seconds)?;
    outcome.subscribers = open;
    if let (Some(before), Some(after)) = (before_kb, after_kb) {
        outcome.broker_rss_per_connection_kb =
            (open > 0).then(|| (after as f64 - before as f64) / open as f64);
    }
    Ok(outcome)
}

/// `clients` threads, each running `cycle` (given its client id and index) in a loop until the
/// run's duration or `messages_max` cycles, and `alongside` on a thread of its own until they
/// are done (told by the flag it gets). Returns the cycles' counts, what `alongside` returned,
/// and the measured seconds.
fn cycle_clients<T: Send>(
    params: &Params,
    broker: &str,
    prefix: &str,
    cycle: impl Fn(&str, usize) -> anyhow::Result<()> + Sync,
    alongside: impl FnOnce(&AtomicBool) -> T + Send,
) -> (Counts, T, f64) {
    let run_id = std::process::id();
    let total = params.total_duration();
    let cycles = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let measured_from = start + params.warmup;
    let counts = Mutex::new(Counts::new());
    let beside = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..params.clients)
            .map(|client| {
                let (cycles, counts, cycle) = (&cycles, &counts, &cycle);
                scope.spawn(move || {
                    let id = format!("lt-{run_id}-{prefix}{client}");
                    let mut mine = Counts::new();
                    while start.elapsed() < total
                        && params.messages_max.is_none_or(|max| mine.attempted < max)
                    {
                        let began = Instant::now();
                        let result = cycle(&id, client);
                        mine.record(result, began, began.elapsed(), measured_from);
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.lock().expect("no panics").merge(mine);
                })
            })
            .collect();
        let beside = scope.spawn(|| alongside(&done));
        scope.spawn(|| progress::show(broker, total, &cycles, &done));
        for client in clients {
            client.join().expect("client thread");
        }
        done.store(true, Ordering::Release);
        beside.join().expect("thread beside the clients")
    });
    let seconds = start.elapsed().saturating_sub(params.warmup).as_secs_f64();
    (counts.into_inner().expect("no panics"), beside, seconds)
}

/// `clients` threads, each looping: connect (clean session, the same client id each time),
/// subscribe to one topic, disconnect; until the run's duration or `messages_max` cycles.
pub fn churn(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    let (counts, (), seconds) = cycle_clients(
        params,
        broker,
        "c",
        |id, client| {
            let mut connection = Connection::open_light(&params.target, id, params.version)?;
            connection.subscribe(&[format!("loadtest/churn/{client}")], QoS::AtLeastOnce)?;
            connection.disconnect();
            Ok(())
        },
        |_| (),
    );
    let mut outcome = counts.outcome(broker, params, seconds)?;
    outcome.publishers = params.clients;
    Ok(outcome)
}

/// How often the bystander of `handshakes` sends its probe.
const BYSTANDER_EVERY: Duration = Duration::from_millis(10);

/// `clients` threads, each looping: connect (a full TLS handshake with `--tls`), CONNACK,
/// disconnect; until the run's duration or `messages_max` cycles. Meanwhile one client, connected
/// before, publishes to a topic it subscribes to every `BYSTANDER_EVERY` and times each round
/// trip: what the storm costs the clients a broker already serves.
pub fn handshakes(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    let run_id = std::process::id();
    let measured_from = Instant::now() + params.warmup;
    let topic = format!("loadtest/bystander/{run_id}");
    let mut bystander =
        Connection::open(&params.target, &format!("lt-{run_id}-bystander"), params.version, false)?;
    bystander.subscribe(std::slice::from_ref(&topic), QoS::AtMostOnce)?;
    bystander.set_read_timeout(Some(Duration::from_secs(5)))?;
    let topic = TopicName::new(topic)?;
    let probe = |done: &AtomicBool| -> anyhow::Result<Histogram<u64>> {
        let mut latency_ns = latency_histogram();
        while !done.load(Ordering::Acquire) {
            let began = Instant::now();
            bystander.queue_publish(&topic, Bytes::from_static(b"probe"), QoS::AtMostOnce, None);
            bystander.flush()?;
            loop {
                match bystander.read_packet()? {
                    Some(Packet::Publish(_)) => break,
                    Some(_) => continue,
                    None => anyhow::bail!("the broker closed the bystander"),
                }
            }
            if began >= measured_from {
                let _ = latency_ns.record(began.elapsed().as_nanos().max(1) as u64);
            }
            std::thread::sleep(BYSTANDER_EVERY.saturating_sub(began.elapsed()));
        }
        Ok(latency_ns)
    };
    let (counts, bystander_ns, seconds) = cycle_clients(
        params,
        broker,
        "h",
        |id, _| {
            Connection::open_light(&params.target, id, params.version).map(Connection::disconnect)
        },
        probe,
    );
    bystander.disconnect();
    let mut outcome = counts.outcome(broker, params, seconds)?;
    outcome.publishers = params.clients;
    outcome.bystander_latency_us = Some(Percentiles::of(&bystander_ns?));
    Ok(outcome)
}
