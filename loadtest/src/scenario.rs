//! Running one scenario against one broker: who publishes where, who subscribes to what, the
//! publisher and subscriber loops, and the figures that come out. Every loop is bounded by the
//! run's duration or message count and stops by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use culex::protocol::{Packet, ProtocolVersion, QoS, TopicName};
use serde::Serialize;

use crate::accounting::{stamp, Tally, HEADER_BYTES};
use crate::client::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// N publishers, each to its own subscriber.
    Pairs,
    /// N publishers, one subscriber to all of them.
    FanIn,
    /// One publisher, N subscribers to it.
    FanOut,
}

#[derive(Debug, Clone)]
pub struct Params {
    /// Where publishers connect.
    pub addr: SocketAddr,
    /// Where subscribers connect: `addr`, or another broker bridged to it.
    pub subscribe_addr: SocketAddr,
    pub shape: Shape,
    pub clients: usize,
    pub qos: QoS,
    pub payload_bytes: usize,
    pub version: ProtocolVersion,
    pub duration: Duration,
    /// Per publisher; the run ends at whichever of this and `duration` comes first.
    pub messages_max: Option<u64>,
    /// Total messages per second over all publishers; flat out when absent.
    pub rate: Option<u64>,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub window: usize,
    /// Subscribers keep their sessions (what persistence stores).
    pub persistent_sessions: bool,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub broker: String,
    pub scenario: Shape,
    pub qos: u8,
    pub payload_bytes: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_us: Percentiles,
    /// Broker CPU seconds per million delivered messages, when the broker process is known.
    pub broker_cpu_s_per_million: Option<f64>,
    pub broker_peak_rss_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// A subscriber stops this long after the last message once publishing has ended.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// And never drains longer than this.
const DRAIN_MAX: Duration = Duration::from_secs(20);
/// QoS 0 messages written per syscall when not rate limited.
const BATCH: usize = 64;

struct Plan {
    publisher_topics: Vec<String>,
    subscriber_filters: Vec<String>,
    /// Whether subscriber `s` receives publisher `p`.
    receives: fn(usize, usize) -> bool,
}

impl Plan {
    fn new(shape: Shape, clients: usize) -> Plan {
        let n = clients.max(1);
        match shape {
            Shape::Pairs => Plan {
                publisher_topics: (0..n).map(|i| format!("loadtest/pair/{i}")).collect(),
                subscriber_filters: (0..n).map(|i| format!("loadtest/pair/{i}")).collect(),
                receives: |s, p| s == p,
            },
            Shape::FanIn => Plan {
                publisher_topics: (0..n).map(|i| format!("loadtest/in/{i}")).collect(),
                subscriber_filters: vec!["loadtest/in/#".into()],
                receives: |_, _| true,
            },
            Shape::FanOut => Plan {
                publisher_topics: vec!["loadtest/out".into()],
                subscriber_filters: (0..n).map(|_| "loadtest/out".into()).collect(),
                receives: |_, _| true,
            },
        }
    }
}

pub fn run(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    let plan = Plan::new(params.shape, params.clients);
    let publishers = plan.publisher_topics.len();
    let epoch = Instant::now();
    let run_id = std::process::id();
    let mut subscribers = Vec::new();
    for (i, filter) in plan.subscriber_filters.iter().enumerate() {
        let mut connection = Connection::open(
            params.subscribe_addr,
            &format!("lt-{run_id}-s{i}"),
            params.version,
            params.persistent_sessions,
        )?;
        connection.subscribe(filter, params.qos)?;
        subscribers.push(connection);
    }
    let mut publisher_connections = Vec::new();
    for i in 0..publishers {
        publisher_connections.push(Connection::open(
            params.addr,
            &format!("lt-{run_id}-p{i}"),
            params.version,
            false,
        )?);
    }
    let publishing_done = AtomicBool::new(false);
    let start = Instant::now();
    let (sent, tallies) = std::thread::scope(|scope| {
        let subscriber_threads: Vec<_> = subscribers
            .into_iter()
            .map(|connection| {
                let done = &publishing_done;
                scope.spawn(move || subscribe_loop(connection, publishers, epoch, done))
            })
            .collect();
        let publisher_threads: Vec<_> = publisher_connections
            .into_iter()
            .zip(&plan.publisher_topics)
            .enumerate()
            .map(|(index, (connection, topic))| {
                scope.spawn(move || publish_loop(connection, index, topic, params, epoch))
            })
            .collect();
        let sent: Vec<u64> = publisher_threads
            .into_iter()
            .map(|t| t.join().expect("publisher thread"))
            .collect::<anyhow::Result<_>>()?;
        publishing_done.store(true, Ordering::Release);
        let tallies: Vec<(Tally, Instant)> = subscriber_threads
            .into_iter()
            .map(|t| t.join().expect("subscriber thread"))
            .collect::<anyhow::Result<_>>()?;
        anyhow::Ok((sent, tallies))
    })?;

    let mut total = Tally::new(publishers);
    let mut expected = 0;
    let mut lost = 0;
    let mut last_receive = start;
    for (s, (tally, last)) in tallies.iter().enumerate() {
        let relevant: Vec<u64> = sent
            .iter()
            .enumerate()
            .map(|(p, n)| if (plan.receives)(s, p) { *n } else { 0 })
            .collect();
        expected += relevant.iter().sum::<u64>();
        lost += tally.missing(&relevant);
        total.merge(tally);
        last_receive = last_receive.max(*last);
    }
    let seconds = last_receive.duration_since(start).as_secs_f64().max(1e-9);
    let quantile = |q: f64| total.latency_ns.value_at_quantile(q) as f64 / 1000.0;
    Ok(Outcome {
        broker: broker.to_string(),
        scenario: params.shape,
        qos: params.qos as u8,
        payload_bytes: params.payload_bytes,
        publishers,
        subscribers: tallies.len(),
        sent: sent.iter().sum(),
        expected,
        received: total.received,
        lost,
        duplicates: total.duplicates,
        out_of_order: total.out_of_order,
        seconds,
        msgs_per_sec: total.received as f64 / seconds,
        mb_per_sec: total.received as f64 * params.payload_bytes as f64 / seconds / 1e6,
        latency_us: Percentiles {
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            p999: quantile(0.999),
            max: total.latency_ns.max() as f64 / 1000.0,
        },
        broker_cpu_s_per_million: None,
        broker_peak_rss_mb: None,
    })
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Publishes until the duration or the message count is reached; returns how many were sent.
fn publish_loop(
    mut connection: Connection,
    index: usize,
    topic: &str,
    params: &Params,
    epoch: Instant,
) -> anyhow::Result<u64> {
    let topic = TopicName::new(topic.to_string())?;
    let payload_bytes = params.payload_bytes.max(HEADER_BYTES);
    let per_publisher_rate =
        params.rate.map(|r| (r as f64 / params.clients.max(1) as f64).max(0.001));
    let batch = if per_publisher_rate.is_some() { 1 } else { BATCH };
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut inflight = 0usize;
    let acknowledged = params.qos != QoS::AtMostOnce;
    let window = params.window.min(connection.receive_maximum);
    connection.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let more =
            started.elapsed() < params.duration && params.messages_max.is_none_or(|max| sent < max);
        if !more && inflight == 0 {
            break;
        }
        if more {
            let room = if acknowledged { window.saturating_sub(inflight) } else { batch };
            for _ in 0..room.min(batch) {
                if params.messages_max.is_some_and(|max| sent >= max) {
                    break;
                }
                if let Some(rate) = per_publisher_rate {
                    let due = Duration::from_secs_f64(sent as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let mut payload = BytesMut::zeroed(payload_bytes);
                stamp(&mut payload, now_ns(epoch), index as u32, sent);
                let packet_id = acknowledged.then(|| connection.next_packet_id());
                connection.queue_publish(&topic, Bytes::from(payload), params.qos, packet_id);
                sent += 1;
                inflight += usize::from(acknowledged);
            }
            connection.flush()?;
        }
        if acknowledged && (inflight >= window || !more) {
            // Wait for acknowledgements to make room (or to finish).
            if !connection.fill().context("reading acknowledgements")? {
                anyhow::bail!("broker closed the publisher's connection");
            }
            while let Some(packet) = connection.decode()? {
                match packet {
                    Packet::PubAck(_) | Packet::PubComp(_) => inflight = inflight.saturating_sub(1),
                    Packet::PubRec(ack) => connection.queue_ack(Packet::PubRel, ack.packet_id),
                    _ => {}
                }
            }
            connection.flush()?;
        }
    }
    connection.disconnect();
    Ok(sent)
}

/// Receives until publishing has ended and the broker has been quiet for `DRAIN_IDLE`.
fn subscribe_loop(
    mut connection: Connection,
    publishers: usize,
    epoch: Instant,
    publishing_done: &AtomicBool,
) -> anyhow::Result<(Tally, Instant)> {
    let mut tally = Tally::new(publishers);
    let mut last = Instant::now();
    let mut done_at: Option<Instant> = None;
    connection.set_read_timeout(Some(Duration::from_millis(100)))?;
    loop {
        if publishing_done.load(Ordering::Acquire) {
            let since = *done_at.get_or_insert_with(Instant::now);
            let quiet = last.max(since).elapsed();
            if quiet >= DRAIN_IDLE || since.elapsed() >= DRAIN_MAX {
                break;
            }
        }
        match connection.fill() {
            Ok(true) => {}
            Ok(false) => anyhow::bail!("broker closed the subscriber's connection"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        let now = now_ns(epoch);
        while let Some(packet) = connection.decode()? {
            match packet {
                Packet::Publish(publish) => {
                    tally.record(&publish.payload, now);
                    last = Instant::now();
                    match (publish.qos, publish.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => connection.queue_ack(Packet::PubAck, id),
                        (QoS::ExactlyOnce, Some(id)) => connection.queue_ack(Packet::PubRec, id),
                        _ => {}
                    }
                }
                Packet::PubRel(ack) => connection.queue_ack(Packet::PubComp, ack.packet_id),
                _ => {}
            }
        }
        connection.flush()?;
    }
    connection.disconnect();
    Ok((tally, last))
}

/// Publishes probes on `master` until one reaches a subscriber on `leaf`: the bridge between
/// them is up. Probes go to `loadtest/ready`, which no scenario subscribes to.
pub fn await_bridge(master: SocketAddr, leaf: SocketAddr) -> anyhow::Result<()> {
    let version = ProtocolVersion::V311;
    let mut subscriber = Connection::open(leaf, "lt-bridge-ready-sub", version, false)?;
    subscriber.subscribe("loadtest/ready", QoS::AtMostOnce)?;
    subscriber.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut prober = Connection::open(master, "lt-bridge-ready-pub", version, false)?;
    let topic = TopicName::new("loadtest/ready")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        prober.queue_publish(&topic, Bytes::from_static(b"ready"), QoS::AtMostOnce, None);
        prober.flush()?;
        match subscriber.read_packet() {
            Ok(Some(Packet::Publish(_))) => break,
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("{leaf} closed the probe subscriber"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(Instant::now() < deadline, "no bridge from {master} to {leaf} in 20 s");
    }
    prober.disconnect();
    subscriber.disconnect();
    Ok(())
}
