//! Running one scenario against one broker: who publishes where, who subscribes to what, the
//! publisher and subscriber loops, and the figures that come out. Every loop is bounded by the
//! run's duration or message count and stops by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use culex::protocol::{Packet, ProtocolVersion, QoS, TopicName};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounting::{stamp, Tally, HEADER_BYTES};
use crate::client::{Connection, Target};
use crate::fleet::{FleetFigures, FleetShape};
use crate::{fleet, lifecycle, progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// N publishers, each to its own subscriber.
    Pairs,
    /// N publishers, one subscriber to all of them.
    FanIn,
    /// One publisher, N subscribers to it.
    FanOut,
    /// N publishers, N subscribers in one `$share` group: each message to one of them.
    Shared,
    /// N idle connections held open: the broker's memory per connection.
    Connections,
    /// N clients in a loop of connect, subscribe, disconnect.
    Churn,
    /// N clients in a loop of connect (a full TLS handshake with `--tls`), CONNACK,
    /// disconnect, while one client already connected times round trips through the broker.
    Handshakes,
    /// N devices, each publishing telemetry at `--device-rate` and subscribed to its own
    /// commands, and one backend taking all the telemetry through a wildcard and sending
    /// `--command-rate` commands to each device; one event loop drives them all.
    Fleet,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Pairs => "pairs",
            Shape::FanIn => "fan-in",
            Shape::FanOut => "fan-out",
            Shape::Shared => "shared",
            Shape::Connections => "connections",
            Shape::Churn => "churn",
            Shape::Handshakes => "handshakes",
            Shape::Fleet => "fleet",
        }
    }

    /// Whether it moves messages (rather than opening and closing connections).
    pub fn is_traffic(self) -> bool {
        !matches!(self, Shape::Connections | Shape::Churn | Shape::Handshakes)
    }
}

#[derive(Debug, Clone)]
pub struct Params {
    /// Where publishers connect.
    pub target: Target,
    /// Where subscribers connect: `target`, or another broker bridged to it.
    pub subscribe_target: Target,
    /// The broker process at `target`, when known: its memory per connection is measured.
    pub broker_pid: Option<u32>,
    pub shape: Shape,
    pub clients: usize,
    pub qos: QoS,
    pub payload_bytes: usize,
    /// Topics each publisher cycles through.
    pub topics: usize,
    pub version: ProtocolVersion,
    /// Publishing (or connecting) before measuring starts.
    pub warmup: Duration,
    /// Publishing (or connecting) that is measured, after the warm-up.
    pub duration: Duration,
    /// Per publisher (per client in `churn`); the run ends at whichever of this and
    /// `warmup + duration` comes first.
    pub messages_max: Option<u64>,
    /// Total messages per second over all publishers; flat out when absent.
    pub rate: Option<u64>,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub window: usize,
    /// Subscribers keep their sessions (what persistence stores).
    pub persistent_sessions: bool,
    /// `fleet`: the devices' rates and topic depth.
    pub fleet: FleetShape,
}

impl Params {
    /// How long publishers (or connecting clients) go on, warm-up included.
    pub fn total_duration(&self) -> Duration {
        self.warmup + self.duration
    }
}

/// The figures of one run. In `connections`, a "message" is a connection (sent: attempted,
/// received: accepted, latency: CONNECT to CONNACK); in `churn`, a cycle of connect, subscribe
/// and disconnect (latency: the whole cycle).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub broker: String,
    pub scenario: Shape,
    pub mqtt: &'static str,
    pub qos: u8,
    pub payload_bytes: usize,
    pub topics: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub warmup_seconds: f64,
    pub sent: u64,
    pub expected: u64,
    /// Distinct messages received, warm-up included.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// The measured span: from the end of the warm-up to the last message received.
    pub seconds: f64,
    /// Messages sent after the warm-up and received, per second of the measured span.
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_us: Percentiles,
    /// `handshakes`: the round trips of a client connected before the storm, during it.
    pub bystander_latency_us: Option<Percentiles>,
    /// (percentile, microseconds) from p0 to p100, for plotting.
    pub latency_curve_us: Vec<(f64, f64)>,
    /// Broker CPU seconds per million delivered messages, when the broker process is known.
    pub broker_cpu_s_per_million: Option<f64>,
    pub broker_peak_rss_mb: Option<f64>,
    /// `connections`: the broker's resident memory grown per open connection.
    pub broker_rss_per_connection_kb: Option<f64>,
    /// The load generator's own CPU seconds per million delivered messages.
    pub loadtest_cpu_s_per_million: Option<f64>,
    pub fleet: Option<FleetFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The quantiles of the latency curve: evenly spread in "nines".
const CURVE_QUANTILES: [f64; 13] =
    [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0];

impl Percentiles {
    pub fn of(latency_ns: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |q: f64| us(latency_ns.value_at_quantile(q));
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: us(latency_ns.max()),
        }
    }
}

impl Outcome {
    /// An outcome with the latency figures of `latency_ns` and every count zero, for a
    /// scenario to fill in.
    pub fn new(broker: &str, params: &Params, latency_ns: &Histogram<u64>) -> Outcome {
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |q: f64| us(latency_ns.value_at_quantile(q));
        Outcome {
            broker: broker.to_string(),
            scenario: params.shape,
            mqtt: match params.version {
                ProtocolVersion::V31 => "3.1",
                ProtocolVersion::V311 => "3.1.1",
                ProtocolVersion::V5 => "5",
            },
            qos: params.qos as u8,
            payload_bytes: params.payload_bytes,
            topics: params.topics,
            publishers: 0,
            subscribers: 0,
            warmup_seconds: params.warmup.as_secs_f64(),
            sent: 0,
            expected: 0,
            received: 0,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            seconds: 0.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            latency_us: Percentiles::of(latency_ns),
            bystander_latency_us: None,
            latency_curve_us: if latency_ns.is_empty() {
                Vec::new()
            } else {
                CURVE_QUANTILES.iter().map(|&q| (q * 100.0, at(q))).collect()
            },
            broker_cpu_s_per_million: None,
            broker_peak_rss_mb: None,
            broker_rss_per_connection_kb: None,
            loadtest_cpu_s_per_million: None,
            fleet: None,
        }
    }
}

/// A subscriber stops this long after the last message once publishing has ended, if it has
/// not received everything by then.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// And never drains longer than this.
const DRAIN_MAX: Duration = Duration::from_secs(20);
/// How often a draining subscriber checks whether it has received everything.
const DRAIN_CHECK: Duration = Duration::from_millis(50);
/// QoS 0 messages written per syscall when not rate limited.
const BATCH: usize = 64;

struct Plan {
    /// Per publisher, the topics it cycles through.
    publisher_topics: Vec<Vec<String>>,
    /// Per subscriber, its filters.
    subscriber_filters: Vec<Vec<String>>,
    /// Whether subscriber `s` receives publisher `p`'s messages.
    receives: fn(usize, usize) -> bool,
    /// The subscribers are one shared subscription group: each message reaches one of them,
    /// and losses are counted over what the group received together.
    shared: bool,
}

impl Plan {
    /// Pairs and fan-out subscribe to each topic by name; fan-in and shared with one `#`.
    fn new(shape: Shape, clients: usize, topics: usize) -> Plan {
        let n = clients.max(1);
        let topics_of = |prefix: &str| -> Vec<String> {
            (0..topics.max(1)).map(|t| format!("{prefix}/{t}")).collect()
        };
        match shape {
            Shape::Pairs => Plan {
                publisher_topics: (0..n)
                    .map(|i| topics_of(&format!("loadtest/pair/{i}")))
                    .collect(),
                subscriber_filters: (0..n)
                    .map(|i| topics_of(&format!("loadtest/pair/{i}")))
                    .collect(),
                receives: |s, p| s == p,
                shared: false,
            },
            Shape::FanIn => Plan {
                publisher_topics: (0..n).map(|i| topics_of(&format!("loadtest/in/{i}"))).collect(),
                subscriber_filters: vec![vec!["loadtest/in/#".into()]],
                receives: |_, _| true,
                shared: false,
            },
            Shape::FanOut => Plan {
                publisher_topics: vec![topics_of("loadtest/out")],
                subscriber_filters: (0..n).map(|_| topics_of("loadtest/out")).collect(),
                receives: |_, _| true,
                shared: false,
            },
            Shape::Shared => Plan {
                publisher_topics: (0..n)
                    .map(|i| topics_of(&format!("loadtest/shared/{i}")))
                    .collect(),
                subscriber_filters: (0..n)
                    .map(|_| vec!["$share/loadtest/loadtest/shared/#".into()])
                    .collect(),
                receives: |_, _| true,
                shared: true,
            },
            Shape::Connections | Shape::Churn | Shape::Handshakes | Shape::Fleet => {
                unreachable!("{} runs without a plan of publishers and subscribers", shape.name())
            }
        }
    }
}

pub fn run(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    match params.shape {
        Shape::Connections => lifecycle::idle_connections(params, broker),
        Shape::Churn => lifecycle::churn(params, broker),
        Shape::Handshakes => lifecycle::handshakes(params, broker),
        Shape::Fleet => fleet::run(params, broker),
        _ => traffic(params, broker),
    }
}

/// What subscribers learn when publishing ends, and share while it goes on.
struct Finish {
    publishing_done: AtomicBool,
    /// Messages each publisher sent, set when publishing is done.
    sent: OnceLock<Vec<u64>>,
    /// Distinct messages received by all subscribers so far.
    received: AtomicU64,
}

fn traffic(params: &Params, broker: &str) -> anyhow::Result<Outcome> {
    let plan = Plan::new(params.shape, params.clients, params.topics);
    let publishers = plan.publisher_topics.len();
    let epoch = Instant::now();
    let run_id = std::process::id();
    let mut subscribers = Vec::new();
    for (i, filters) in plan.subscriber_filters.iter().enumerate() {
        let mut connection = Connection::open(
            &params.subscribe_target,
            &format!("lt-{run_id}-s{i}"),
            params.version,
            params.persistent_sessions,
        )?;
        connection.subscribe(filters, params.qos)?;
        subscribers.push(connection);
    }
    let mut publisher_connections = Vec::new();
    for i in 0..publishers {
        publisher_connections.push(Connection::open(
            &params.target,
            &format!("lt-{run_id}-p{i}"),
            params.version,
            false,
        )?);
    }
    let finish = Finish {
        publishing_done: AtomicBool::new(false),
        sent: OnceLock::new(),
        received: AtomicU64::new(0),
    };
    let start = Instant::now();
    let measure_from_ns = now_ns(epoch) + params.warmup.as_nanos() as u64;
    let (sent, tallies) = std::thread::scope(|scope| {
        let subscriber_threads: Vec<_> = subscribers
            .into_iter()
            .enumerate()
            .map(|(index, connection)| {
                let (plan, finish) = (&plan, &finish);
                scope.spawn(move || {
                    let mut tally = Tally::new(publishers, measure_from_ns);
                    let last = subscribe_loop(connection, index, plan, &mut tally, epoch, finish)?;
                    anyhow::Ok((tally, last))
                })
            })
            .collect();
        let publisher_threads: Vec<_> = publisher_connections
            .into_iter()
            .zip(&plan.publisher_topics)
            .enumerate()
            .map(|(index, (connection, topics))| {
                scope.spawn(move || {
                    publish_loop(connection, index, topics, publishers, params, epoch)
                })
            })
            .collect();
        scope.spawn(|| {
            progress::show(
                broker,
                params.total_duration(),
                &finish.received,
                &finish.publishing_done,
            )
        });
        let sent: anyhow::Result<Vec<u64>> =
            publisher_threads.into_iter().map(|t| t.join().expect("publisher thread")).collect();
        finish.sent.get_or_init(|| sent.as_ref().map_or_else(|_| Vec::new(), Clone::clone));
        finish.publishing_done.store(true, Ordering::Release);
        let tallies: anyhow::Result<Vec<(Tally, Instant)>> =
            subscriber_threads.into_iter().map(|t| t.join().expect("subscriber thread")).collect();
        anyhow::Ok((sent?, tallies?))
    })?;

    let mut total = Tally::new(publishers, measure_from_ns);
    let mut group = Tally::new(publishers, measure_from_ns);
    let mut expected = 0;
    let mut lost = 0;
    let mut duplicates = 0;
    let mut last_receive = start;
    for (s, (tally, last)) in tallies.iter().enumerate() {
        total.merge(tally);
        last_receive = last_receive.max(*last);
        if plan.shared {
            duplicates += group.merge_seen(tally);
        } else {
            let relevant = relevant_sent(&plan, s, &sent);
            expected += relevant.iter().sum::<u64>();
            lost += tally.missing(&relevant);
        }
    }
    if plan.shared {
        expected = sent.iter().sum();
        lost = group.missing(&sent);
    }
    if total.measured == 0 && total.received > 0 {
        eprintln!("{broker}: every message was sent during the warm-up: nothing measured");
    }
    let measured_from = start + params.warmup;
    let seconds = last_receive.saturating_duration_since(measured_from).as_secs_f64().max(1e-9);
    let mut outcome = Outcome::new(broker, params, &total.latency_ns);
    outcome.publishers = publishers;
    outcome.subscribers = tallies.len();
    outcome.sent = sent.iter().sum();
    outcome.expected = expected;
    outcome.received = total.received;
    outcome.lost = lost;
    outcome.duplicates = total.duplicates + duplicates;
    outcome.out_of_order = total.out_of_order;
    outcome.seconds = seconds;
    outcome.msgs_per_sec = total.measured as f64 / seconds;
    outcome.mb_per_sec = outcome.msgs_per_sec * params.payload_bytes as f64 / 1e6;
    Ok(outcome)
}

/// What each publisher sent that subscriber `s` should have received.
fn relevant_sent(plan: &Plan, s: usize, sent: &[u64]) -> Vec<u64> {
    sent.iter().enumerate().map(|(p, n)| if (plan.receives)(s, p) { *n } else { 0 }).collect()
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Publishes, cycling through `topics`, until the duration or the message count is reached;
/// returns how many were sent.
fn publish_loop(
    mut connection: Connection,
    index: usize,
    topics: &[String],
    publishers: usize,
    params: &Params,
    epoch: Instant,
) -> anyhow::Result<u64> {
    let topics: Vec<TopicName> =
        topics.iter().map(|t| TopicName::new(t.clone())).collect::<Result<_, _>>()?;
    let payload_bytes = params.payload_bytes.max(HEADER_BYTES);
    let per_publisher_rate = params.rate.map(|r| (r as f64 / publishers as f64).max(0.001));
    let batch = if per_publisher_rate.is_some() { 1 } else { BATCH };
    let duration = params.total_duration();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut inflight = 0usize;
    let acknowledged = params.qos != QoS::AtMostOnce;
    let window = params.window.min(connection.receive_maximum);
    connection.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let more = started.elapsed() < duration && params.messages_max.is_none_or(|max| sent < max);
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
                let topic = &topics[(sent % topics.len() as u64) as usize];
                connection.queue_publish(topic, Bytes::from(payload), params.qos, packet_id);
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

/// Receives until publishing has ended and either everything this subscriber should receive
/// has come or the broker has been quiet for `DRAIN_IDLE`. Returns when the last message came.
fn subscribe_loop(
    mut connection: Connection,
    index: usize,
    plan: &Plan,
    tally: &mut Tally,
    epoch: Instant,
    finish: &Finish,
) -> anyhow::Result<Instant> {
    let mut last = Instant::now();
    let mut done_at: Option<Instant> = None;
    let mut checked_at = Instant::now();
    connection.set_read_timeout(Some(Duration::from_millis(100)))?;
    loop {
        if finish.publishing_done.load(Ordering::Acquire) {
            let since = *done_at.get_or_insert_with(Instant::now);
            let quiet = last.max(since).elapsed();
            if quiet >= DRAIN_IDLE || since.elapsed() >= DRAIN_MAX {
                break;
            }
            if checked_at.elapsed() >= DRAIN_CHECK {
                checked_at = Instant::now();
                let sent = finish.sent.get().map_or(&[][..], Vec::as_slice);
                let complete = if plan.shared {
                    finish.received.load(Ordering::Relaxed) >= sent.iter().sum::<u64>()
                } else {
                    tally.missing(&relevant_sent(plan, index, sent)) == 0
                };
                if complete {
                    break;
                }
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
        let before = tally.received;
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
        finish.received.fetch_add(tally.received - before, Ordering::Relaxed);
        connection.flush()?;
    }
    connection.disconnect();
    Ok(last)
}

/// Publishes probes on `master` until one reaches a subscriber on `leaf`: the bridge between
/// them is up. Probes go to `loadtest/ready`, which no scenario subscribes to.
pub fn await_bridge(master: SocketAddr, leaf: SocketAddr) -> anyhow::Result<()> {
    let version = ProtocolVersion::V311;
    let mut subscriber =
        Connection::open(&Target::plain(leaf), "lt-bridge-ready-sub", version, false)?;
    subscriber.subscribe(&["loadtest/ready".into()], QoS::AtMostOnce)?;
    subscriber.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut prober =
        Connection::open(&Target::plain(master), "lt-bridge-ready-pub", version, false)?;
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
