//! The instruments every shard keeps: its [`ShardCounters`] (written by that shard alone, with
//! relaxed loads and stores and no atomic read-modify-write, and read by any), and the heap
//! against `memory_limit`. Counters of events (packets, bytes, connections) are bumped where the
//! event happens; levels (clients connected, subscriptions, stored messages) are sampled by each
//! shard on its sweep. `crate::sys` publishes their sum as `$SYS`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::{QoS, ReasonCode};

/// A number written by one shard and read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard's thread may call this (or `set`): a plain load and
    /// store, so a bump costs what a non-atomic one does.
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution written by one shard and read by any: how many observations fell at or
/// under each bound (and above the last), their sum and count. `N` bounds, `N + 1` buckets.
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    buckets: [Counter; N],
    above: Counter,
    sum: Counter,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: &'static [u64; N]) -> Self {
        Histogram {
            bounds,
            buckets: [const { Counter(AtomicU64::new(0)) }; N],
            above: Counter(AtomicU64::new(0)),
            sum: Counter(AtomicU64::new(0)),
        }
    }

    /// Only the owning shard's thread may call this, as `Counter::add`.
    pub fn observe(&self, value: u64) {
        match self.bounds.iter().position(|bound| value <= *bound) {
            Some(i) => self.buckets[i].add(1),
            None => self.above.add(1),
        }
        self.sum.add(value);
    }

    /// Each bound with the observations at or under it (cumulative, as Prometheus has them),
    /// then the count of all.
    pub fn cumulative(&self) -> ([(u64, u64); N], u64) {
        let mut total = 0;
        let counts = std::array::from_fn(|i| {
            total += self.buckets[i].get();
            (self.bounds[i], total)
        });
        (counts, total + self.above.get())
    }

    pub fn sum(&self) -> u64 {
        self.sum.get()
    }
}

/// Bounds of `commit_micros`: 100 µs to 1 s.
pub const COMMIT_MICROS_BUCKETS: usize = 13;
const COMMIT_MICROS_BOUNDS: [u64; COMMIT_MICROS_BUCKETS] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// Bounds of `commit_changes`: 1 to 4,096 changes.
pub const COMMIT_CHANGES_BUCKETS: usize = 13;
const COMMIT_CHANGES_BOUNDS: [u64; COMMIT_CHANGES_BUCKETS] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096];

/// Declares the per-shard counters and their plain snapshot together, so they cannot drift.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters. Aligned apart so that shards never write the same cache line.
        #[derive(Debug)]
        #[repr(align(128))]
        pub struct ShardCounters {
            $($(#[$doc])* pub $name: Counter,)*
            /// Store commits (`persistence true`): how long each took, in microseconds.
            pub commit_micros: Histogram<COMMIT_MICROS_BUCKETS>,
            /// Store commits: how many changes each wrote (its group commit's size).
            pub commit_changes: Histogram<COMMIT_CHANGES_BUCKETS>,
        }

        impl Default for ShardCounters {
            fn default() -> Self {
                ShardCounters {
                    $($name: Counter::default(),)*
                    commit_micros: Histogram::new(&COMMIT_MICROS_BOUNDS),
                    commit_changes: Histogram::new(&COMMIT_CHANGES_BOUNDS),
                }
            }
        }

        /// The counters of every shard, summed.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Totals {
            $(pub $name: u64,)*
        }

        impl Totals {
            pub fn sum(shards: &[Arc<ShardCounters>]) -> Totals {
                let mut totals = Totals::default();
                for shard in shards {
                    $(totals.$name += shard.$name.get();)*
                }
                totals
            }
        }
    };
}

counters! {
    /// MQTT packets of any type, in and out.
    packets_received,
    packets_sent,
    /// Bytes read from and written to client and bridge sockets.
    bytes_received,
    bytes_sent,
    /// PUBLISH packets, and their payload bytes.
    publish_received,
    publish_sent,
    publish_bytes_received,
    publish_bytes_sent,
    /// The same PUBLISH packets by QoS (`count_publish_received`, `count_publish_sent`). Not
    /// in Mosquitto's `$SYS` tree.
    publish_received_qos0,
    publish_received_qos1,
    publish_received_qos2,
    publish_sent_qos0,
    publish_sent_qos1,
    publish_sent_qos2,
    /// Messages not delivered to a subscriber: queue limits, a full outbox, expiry, a packet
    /// larger than the client takes. The sum of the `dropped_` counters below (`count_drop`).
    publish_dropped,
    dropped_queue_full,
    dropped_offline,
    dropped_expired,
    dropped_outbox_full,
    dropped_too_large,
    dropped_memory_limit,
    dropped_no_member,
    /// Packets that could not be decoded (each closed its connection), and reads that failed
    /// (a reset, not an orderly end). Not in Mosquitto's `$SYS` tree.
    packets_malformed,
    read_errors,
    /// TLS handshakes completed on TLS listeners, and failed (a client trusting another CA, a
    /// certificate refused or revoked, plaintext on a TLS port). Not in Mosquitto's `$SYS`.
    tls_handshakes,
    tls_handshake_failures,
    /// Flow control: times a task waited for a subscriber it congested, subscribers found
    /// stuck (no progress in `STUCK_AFTER`), and times a connection waited for the batches to
    /// another shard.
    flow_waits,
    flow_stuck,
    outbound_waits,
    /// TCP connections accepted.
    sockets,
    /// CONNECTs accepted.
    connections,
    /// Connections refused, by `Refusal` (`count_refusal`). Not in Mosquitto's `$SYS` tree.
    refused_protocol_version,
    refused_client_id,
    refused_not_authorized,
    refused_memory_limit,
    refused_max_connections,
    refused_connection_rate,
    refused_other,
    /// Sessions ended by their expiry while offline.
    sessions_expired,
    // Levels, sampled by each shard (`Shard::sample_levels`).
    clients_connected,
    /// Offline sessions kept for their clients.
    clients_disconnected,
    subscriptions,
    shared_subscriptions,
    /// Messages queued or in flight for sessions (once per session holding it), and retained.
    stored_messages,
    stored_bytes,
    /// Retained messages: every shard holds them all, so shard 0 alone reports them.
    retained,
    /// Sweeps the shard's executor has run (every 500 ms): systemd's watchdog is fed only
    /// while every shard's count moves.
    sweeps,
    /// Batches this shard sent to other shards, and the messages in them.
    mesh_batches,
    mesh_messages,
    /// Messages waiting for other shards, not yet sent (sampled on the sweep).
    mesh_pending,
}

/// One bridge's state, written by the shard that runs it and read by the metrics listener,
/// as shard counters are.
#[derive(Debug)]
pub struct BridgeCounters {
    /// Its `connection` name.
    pub name: String,
    /// 1 while its link to the remote broker is up.
    pub up: Counter,
    /// Links it has established.
    pub links: Counter,
    /// Messages its local session holds for the remote (queued and in flight), sampled on the
    /// sweep.
    pub held_messages: Counter,
}

impl BridgeCounters {
    pub fn new(name: &str) -> Self {
        BridgeCounters {
            name: name.to_string(),
            up: Counter::default(),
            links: Counter::default(),
            held_messages: Counter::default(),
        }
    }
}

/// Why a message was not delivered to a subscriber (or, for the memory limit, not taken from
/// its publisher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `max_queued_messages` or `max_queued_bytes`.
    QueueFull,
    /// QoS 0 for a client not connected, without `queue_qos0_messages`.
    Offline,
    /// Its Message Expiry Interval passed before it could be sent.
    Expired,
    /// QoS 0 for a connection whose unwritten bytes are past `OUTBOX_BYTES_MAX`.
    OutboxFull,
    /// Larger than the Maximum Packet Size the client announced.
    TooLarge,
    /// `memory_limit` reached: the PUBLISH was refused.
    MemoryLimit,
    /// A shared subscription group with no member left on any shard.
    NoMember,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::QueueFull,
        DropReason::Offline,
        DropReason::Expired,
        DropReason::OutboxFull,
        DropReason::TooLarge,
        DropReason::MemoryLimit,
        DropReason::NoMember,
    ];

    /// Its name as a Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Offline => "offline",
            DropReason::Expired => "expired",
            DropReason::OutboxFull => "outbox_full",
            DropReason::TooLarge => "too_large",
            DropReason::MemoryLimit => "memory_limit",
            DropReason::NoMember => "no_member",
        }
    }

    /// The counter of drops for this reason.
    pub fn counter(self, counters: &ShardCounters) -> &Counter {
        match self {
            DropReason::QueueFull => &counters.dropped_queue_full,
            DropReason::Offline => &counters.dropped_offline,
            DropReason::Expired => &counters.dropped_expired,
            DropReason::OutboxFull => &counters.dropped_outbox_full,
            DropReason::TooLarge => &counters.dropped_too_large,
            DropReason::MemoryLimit => &counters.dropped_memory_limit,
            DropReason::NoMember => &counters.dropped_no_member,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A protocol level the broker, or the listener (`accept_protocol_versions`), refuses.
    ProtocolVersion,
    /// An empty client id where none may be assigned, or one `clientid_prefixes` refuses.
    ClientId,
    /// Bad credentials, or no name in a client certificate that should give one.
    NotAuthorized,
    /// `memory_limit` reached.
    MemoryLimit,
    /// The listener's `max_connections` reached: closed before any MQTT.
    MaxConnections,
    /// The listener's `max_connection_rate` exceeded: closed before any MQTT.
    ConnectionRate,
    Other,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::ProtocolVersion,
        Refusal::ClientId,
        Refusal::NotAuthorized,
        Refusal::MemoryLimit,
        Refusal::MaxConnections,
        Refusal::ConnectionRate,
        Refusal::Other,
    ];

    /// The refusal a CONNACK's reason code stands for.
    pub fn of(reason: ReasonCode) -> Refusal {
        match reason {
            ReasonCode::UnsupportedProtocolVersion => Refusal::ProtocolVersion,
            ReasonCode::ClientIdentifierNotValid => Refusal::ClientId,
            ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword => Refusal::NotAuthorized,
            ReasonCode::QuotaExceeded => Refusal::MemoryLimit,
            _ => Refusal::Other,
        }
    }

    /// Its name as a Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ProtocolVersion => "protocol_version",
            Refusal::ClientId => "client_id",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::MemoryLimit => "memory_limit",
            Refusal::MaxConnections => "max_connections",
            Refusal::ConnectionRate => "connection_rate",
            Refusal::Other => "other",
        }
    }

    pub fn counter(self, counters: &ShardCounters) -> &Counter {
        match self {
            Refusal::ProtocolVersion => &counters.refused_protocol_version,
            Refusal::ClientId => &counters.refused_client_id,
            Refusal::NotAuthorized => &counters.refused_not_authorized,
            Refusal::MemoryLimit => &counters.refused_memory_limit,
            Refusal::MaxConnections => &counters.refused_max_connections,
            Refusal::ConnectionRate => &counters.refused_connection_rate,
            Refusal::Other => &counters.refused_other,
        }
    }
}

impl ShardCounters {
    /// One PUBLISH received at `qos`, with its payload.
    pub fn count_publish_received(&self, qos: QoS, payload_bytes: usize) {
        self.publish_received.add(1);
        self.publish_bytes_received.add(payload_bytes as u64);
        self.publish_received_at(qos).add(1);
    }

    /// One PUBLISH sent at `qos`, with its payload.
    pub fn count_publish_sent(&self, qos: QoS, payload_bytes: usize) {
        self.publish_sent.add(1);
        self.publish_bytes_sent.add(payload_bytes as u64);
        self.publish_sent_at(qos).add(1);
    }

    pub fn publish_received_at(&self, qos: QoS) -> &Counter {
        match qos {
            QoS::AtMostOnce => &self.publish_received_qos0,
            QoS::AtLeastOnce => &self.publish_received_qos1,
            QoS::ExactlyOnce => &self.publish_received_qos2,
        }
    }

    pub fn publish_sent_at(&self, qos: QoS) -> &Counter {
        match qos {
            QoS::AtMostOnce => &self.publish_sent_qos0,
            QoS::AtLeastOnce => &self.publish_sent_qos1,
            QoS::ExactlyOnce => &self.publish_sent_qos2,
        }
    }

    pub fn count_refusal(&self, refusal: Refusal) {
        refusal.counter(self).add(1);
    }

    /// One message dropped, counted once, where the drop was decided.
    pub fn count_drop(&self, reason: DropReason) {
        self.publish_dropped.add(1);
        reason.counter(self).add(1);
    }
}

/// The heap as the allocator sees it: (current, peak) bytes.
pub type HeapUsage = (u64, u64);

/// The heap as mimalloc accounts it: memory it has committed now and at most (its
/// `mi_process_info`). Larger than the bytes allocated, by the free space in its pages.
pub fn heap_usage() -> HeapUsage {
    let (mut current, mut peak) = (0usize, 0usize);
    let null = std::ptr::null_mut();
    // SAFETY: every out-parameter is either null (not wanted) or a valid `usize`.
    unsafe {
        libmimalloc_sys::mi_process_info(
            null,
            null,
            null,
            null,
            null,
            &mut current,
            &mut peak,
            null,
        )
    };
    (current as u64, peak as u64)
}

/// Gives the pages this thread's heap has emptied back to the system. mimalloc gives back a
/// page only after a delay, and checks for expired delays only when the thread allocates or
/// frees again: a shard that goes quiet after a burst (a storm of connections, a backlog
/// drained) kept the pages its openings and buffers had used, 0.8 KiB per idle connection.
/// Called by each shard's sweep.
pub fn give_back_free_pages() {
    // SAFETY: no arguments; collects the calling thread's heap only.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// Set while the heap is above `memory_limit` (checked on every shard's sweep): new clients
/// and new messages are refused until it falls back.
static OVER_MEMORY_LIMIT: AtomicBool = AtomicBool::new(false);

/// Whether the broker is above its `memory_limit` (one relaxed load: cheap on every PUBLISH).
pub fn over_memory_limit() -> bool {
    OVER_MEMORY_LIMIT.load(Ordering::Relaxed)
}

/// Compares the heap with `memory_limit` now; the flag follows, and the change is logged.
pub fn check_memory_limit(limit: u64) -> bool {
    let (current, _) = heap_usage();
    let over = current > limit;
    if OVER_MEMORY_LIMIT.swap(over, Ordering::Relaxed) != over {
        if over {
            tracing::warn!(
                heap = current,
                limit,
                "memory_limit reached: refusing new clients and messages"
            );
        } else {
            tracing::info!(heap = current, limit, "back under memory_limit");
        }
    }
    over
}
