//! `$SYS`: the tree of `$SYS/broker/...` topics that shard 0 publishes every `sys_interval`
//! from the sum of every shard's counters (`broker::counters`), with Mosquitto 2.0's names,
//! formats and habits: retained, and a topic is published again only when its text changed.

pub mod metrics;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use crate::broker::counters::{heap_usage, HeapUsage, ShardCounters, Totals};
use crate::broker::session::{Message, Source};
use crate::broker::Shard;
use crate::protocol::{Properties, QoS, TopicName};

/// Which counter a load average follows.
type Counted = fn(&Totals) -> u64;

/// The load averages Mosquitto publishes: per-minute rates of these counters, each smoothed
/// over 1, 5 and 15 minutes.
const LOADS: [(&str, Counted); 9] = [
    ("messages/received", |t| t.packets_received),
    ("messages/sent", |t| t.packets_sent),
    ("publish/dropped", |t| t.publish_dropped),
    ("publish/received", |t| t.publish_received),
    ("publish/sent", |t| t.publish_sent),
    ("bytes/received", |t| t.bytes_received),
    ("bytes/sent", |t| t.bytes_sent),
    ("sockets", |t| t.sockets),
    ("connections", |t| t.connections),
];

const LOAD_PERIODS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// What shard 0 remembers between publications.
pub struct SysTree {
    version: String,
    started: Instant,
    /// The last sample: when, and the totals then (for the load averages).
    last: Option<(Instant, Totals)>,
    /// Smoothed per-minute rates, `LOADS` by `LOAD_PERIODS`.
    loads: [[f64; LOAD_PERIODS.len()]; LOADS.len()],
    clients_maximum: u64,
    /// What each topic was last published with.
    published: ahash::AHashMap<String, String>,
}

impl SysTree {
    pub fn new(started: Instant) -> Self {
        SysTree {
            version: format!("culex version {}", env!("CARGO_PKG_VERSION")),
            started,
            last: None,
            loads: [[0.0; LOAD_PERIODS.len()]; LOADS.len()],
            clients_maximum: 0,
            published: ahash::AHashMap::new(),
        }
    }

    /// The topics to publish now, `$SYS/broker/...` with their payloads: all of them the first
    /// time, then those whose text changed.
    pub fn update(
        &mut self,
        now: Instant,
        totals: &Totals,
        heap: HeapUsage,
    ) -> Vec<(String, String)> {
        let mut values: Vec<(String, String)> = Vec::with_capacity(64);
        let mut put = |topic: &str, value: String| values.push((topic.to_string(), value));
        put("version", self.version.clone());
        put("uptime", format!("{} seconds", now.duration_since(self.started).as_secs()));
        let connected = totals.clients_connected;
        let disconnected = totals.clients_disconnected;
        self.clients_maximum = self.clients_maximum.max(connected);
        put("clients/total", (connected + disconnected).to_string());
        // `active` and `inactive` are the names Mosquitto still publishes beside the newer ones.
        put("clients/inactive", disconnected.to_string());
        put("clients/disconnected", disconnected.to_string());
        put("clients/active", connected.to_string());
        put("clients/connected", connected.to_string());
        put("clients/expired", totals.sessions_expired.to_string());
        put("clients/maximum", self.clients_maximum.to_string());
        self.update_loads(now, totals);
        for (row, (name, _)) in LOADS.iter().enumerate() {
            for (column, (period, _)) in LOAD_PERIODS.iter().enumerate() {
                put(&format!("load/{name}/{period}"), format!("{:.2}", self.loads[row][column]));
            }
        }
        put("messages/stored", totals.stored_messages.to_string());
        put("messages/received", totals.packets_received.to_string());
        put("messages/sent", totals.packets_sent.to_string());
        put("store/messages/count", totals.stored_messages.to_string());
        put("store/messages/bytes", totals.stored_bytes.to_string());
        put("subscriptions/count", totals.subscriptions.to_string());
        put("shared_subscriptions/count", totals.shared_subscriptions.to_string());
        put("retained messages/count", totals.retained.to_string());
        put("heap/current", heap.0.to_string());
        put("heap/maximum", heap.1.to_string());
        put("publish/messages/dropped", totals.publish_dropped.to_string());
        put("publish/messages/received", totals.publish_received.to_string());
        put("publish/messages/sent", totals.publish_sent.to_string());
        put("publish/bytes/received", totals.publish_bytes_received.to_string());
        put("publish/bytes/sent", totals.publish_bytes_sent.to_string());
        put("bytes/received", totals.bytes_received.to_string());
        put("bytes/sent", totals.bytes_sent.to_string());
        let published = &mut self.published;
        values.retain(|(topic, value)| published.get(topic) != Some(value));
        values
            .into_iter()
            .map(|(topic, value)| {
                published.insert(topic.clone(), value.clone());
                (format!("$SYS/broker/{topic}"), value)
            })
            .collect()
    }

    /// Mosquitto's load averages: the rate since the last sample, in events per minute, pulled
    /// into each average by `1 - e^(-elapsed/period)`. The first sample starts them from 0.
    fn update_loads(&mut self, now: Instant, totals: &Totals) {
        let Some((then, before)) = self.last.replace((now, *totals)) else { return };
        let elapsed = now.duration_since(then).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        for (row, (_, counter)) in LOADS.iter().enumerate() {
            let rate = counter(totals).saturating_sub(counter(&before)) as f64 * 60.0 / elapsed;
            for (column, (_, period)) in LOAD_PERIODS.iter().enumerate() {
                let average = &mut self.loads[row][column];
                *average = rate + (-elapsed / period).exp() * (*average - rate);
            }
        }
    }
}

/// `sys_interval` as a duration (`None`: 0, no `$SYS`).
pub fn interval(sys_interval_secs: u32) -> Option<Duration> {
    (sys_interval_secs > 0).then(|| Duration::from_secs(u64::from(sys_interval_secs)))
}

/// Shard 0's task: publishes the tree at start and every `sys_interval`, retained at QoS 0,
/// through the same routing as a client's PUBLISH (so ACLs, retained replicas and `$SYS/#`
/// subscribers see it as Mosquitto's own). A reload may change the interval, or turn `$SYS`
/// off (0): the task then waits for a reload that turns it on again.
pub async fn publish_periodically(shard: Rc<RefCell<Shard>>, all: Arc<[Arc<ShardCounters>]>) {
    let mut tree = SysTree::new(Instant::now());
    let reconfigured = shard.borrow().reconfigured();
    loop {
        let every = interval(shard.borrow().config().sys_interval);
        let Some(every) = every else {
            reconfigured.wait().await;
            continue;
        };
        publish_changes(&mut shard.borrow_mut(), &mut tree, &all);
        // A new interval takes effect after this one.
        glommio::timer::sleep(every).await;
    }
}

fn publish_changes(shard: &mut Shard, tree: &mut SysTree, all: &[Arc<ShardCounters>]) {
    shard.sample_levels();
    for (topic, payload) in tree.update(Instant::now(), &Totals::sum(all), heap_usage()) {
        publish(shard, topic, payload, true);
    }
}

/// How often shard 0 publishes the log lines waiting for `log_dest topic`, and at most how
/// many each time (the rest wait: logging cannot take the shard over).
const LOG_LINES_EVERY: Duration = Duration::from_millis(100);
const LOG_LINES_PER_TURN: usize = 256;

/// `log_dest topic`: shard 0 publishes log lines on `$SYS/broker/log/<kind>` (E, W, N, D, M,
/// U), not retained, as Mosquitto does.
pub async fn publish_log_lines(
    shard: Rc<RefCell<Shard>>,
    lines: &'static crossbeam_channel::Receiver<crate::logging::TopicLine>,
) {
    loop {
        glommio::timer::sleep(LOG_LINES_EVERY).await;
        let mut shard = shard.borrow_mut();
        for line in lines.try_iter().take(LOG_LINES_PER_TURN) {
            publish(&mut shard, format!("$SYS/broker/log/{}", line.kind), line.line, false);
        }
    }
}

/// Publishes what the broker says about itself, at QoS 0.
fn publish(shard: &mut Shard, topic: String, payload: String, retain: bool) {
    let Ok(topic) = TopicName::new(topic) else { return };
    shard.publish_internal(Message {
        topic,
        payload: payload.into(),
        qos: QoS::AtMostOnce,
        retain,
        properties: Properties::default(),
        publisher: ByteString::new(),
        source: Source::Unchecked,
        expires_at: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(published: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        published.iter().find(|(t, _)| t == topic).map(|(_, v)| v.as_str())
    }

    #[test]
    fn first_publication_has_every_topic_then_only_changes() {
        let start = Instant::now();
        let mut tree = SysTree::new(start);
        let first = tree.update(start, &Totals::default(), (0, 0));
        assert_eq!(first.len(), 2 + 7 + LOADS.len() * LOAD_PERIODS.len() + 17);
        assert_eq!(value(&first, "$SYS/broker/uptime"), Some("0 seconds"));
        assert!(value(&first, "$SYS/broker/version").unwrap().starts_with("culex version "));
        let totals = Totals { clients_connected: 2, clients_disconnected: 1, ..Totals::default() };
        let second = tree.update(start + Duration::from_secs(10), &totals, (0, 0));
        let topics: Vec<&str> = second.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "$SYS/broker/uptime",
                "$SYS/broker/clients/total",
                "$SYS/broker/clients/inactive",
                "$SYS/broker/clients/disconnected",
                "$SYS/broker/clients/active",
                "$SYS/broker/clients/connected",
                "$SYS/broker/clients/maximum",
            ]
        );
        assert_eq!(value(&second, "$SYS/broker/clients/total"), Some("3"));
        // The maximum stays when clients leave.
        let third = tree.update(start + Duration::from_secs(20), &Totals::default(), (0, 0));
        assert_eq!(value(&third, "$SYS/broker/clients/connected"), Some("0"));
        assert_eq!(value(&third, "$SYS/broker/clients/maximum"), None);
    }

    /// The figures Mosquitto 2.0.11 published, 3 s after start with 4 connections accepted:
    /// 3.90 over a minute, 0.80 over 5, 0.27 over 15.
    #[test]
    fn load_averages_follow_mosquittos_smoothing() {
        let start = Instant::now();
        let mut tree = SysTree::new(start);
        tree.update(start, &Totals::default(), (0, 0));
        let totals = Totals { sockets: 4, ..Totals::default() };
        let published = tree.update(start + Duration::from_secs(3), &totals, (0, 0));
        assert_eq!(value(&published, "$SYS/broker/load/sockets/1min"), Some("3.90"));
        assert_eq!(value(&published, "$SYS/broker/load/sockets/5min"), Some("0.80"));
        assert_eq!(value(&published, "$SYS/broker/load/sockets/15min"), Some("0.27"));
        // With nothing more, the averages decay toward 0.
        let later = tree.update(start + Duration::from_secs(63), &totals, (0, 0));
        assert_eq!(value(&later, "$SYS/broker/load/sockets/1min"), Some("1.44"));
    }

    #[test]
    fn totals_sum_every_shard() {
        let shards: Vec<Arc<ShardCounters>> = (0..3).map(|_| Arc::default()).collect();
        for (n, shard) in shards.iter().enumerate() {
            shard.publish_received.add(n as u64 + 1);
            shard.publish_received.add(10);
            shard.subscriptions.set(5);
        }
        let totals = Totals::sum(&shards);
        assert_eq!((totals.publish_received, totals.subscriptions), (36, 15));
    }
}
