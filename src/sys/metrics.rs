//! Prometheus's text format on Culex's own `metrics_listener`: `GET /metrics` (every shard's
//! counters, labelled by shard, and the process's CPU, memory and descriptors), `GET /healthz`
//! and `GET /readyz` (ready once every shard serves). It runs on a thread of its own and reads
//! the shards' counters as `$SYS` does, with relaxed loads: a scrape never stalls a shard.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::counters::{
    heap_usage, BridgeCounters, DropReason, Histogram, Refusal, ShardCounters,
};
use crate::protocol::QoS;

/// How long one scrape may take to send its request: a client that trickles it loses the
/// connection, and the endpoint goes on with the next.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line and headers read, in bytes.
const REQUEST_BYTES_MAX: u64 = 8 << 10;

/// What one metric is: its name, Prometheus type, help text, and where a shard (or a bridge,
/// `C`) keeps it.
struct Metric<C> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&C) -> u64,
}

const fn counter<C>(name: &'static str, help: &'static str, value: fn(&C) -> u64) -> Metric<C> {
    Metric { name, kind: "counter", help, value }
}

const fn gauge<C>(name: &'static str, help: &'static str, value: fn(&C) -> u64) -> Metric<C> {
    Metric { name, kind: "gauge", help, value }
}

/// The shard counters as Prometheus names them: `culex_` prefix, `_total` for counters, base
/// units in the name.
const METRICS: &[Metric<ShardCounters>] = &[
    counter("culex_packets_received_total", "MQTT packets received.", |c| c.packets_received.get()),
    counter("culex_packets_sent_total", "MQTT packets sent.", |c| c.packets_sent.get()),
    counter("culex_received_bytes_total", "Bytes read from client and bridge sockets.", |c| {
        c.bytes_received.get()
    }),
    counter("culex_sent_bytes_total", "Bytes written to client and bridge sockets.", |c| {
        c.bytes_sent.get()
    }),
    counter("culex_publish_received_bytes_total", "Payload bytes of PUBLISH received.", |c| {
        c.publish_bytes_received.get()
    }),
    counter("culex_publish_sent_bytes_total", "Payload bytes of PUBLISH sent.", |c| {
        c.publish_bytes_sent.get()
    }),
    counter("culex_packets_malformed_total", "Packets that could not be decoded.", |c| {
        c.packets_malformed.get()
    }),
    counter("culex_read_errors_total", "Socket reads that failed.", |c| c.read_errors.get()),
    counter(
        "culex_flow_waits_total",
        "Times a task waited for a subscriber it congested to drain.",
        |c| c.flow_waits.get(),
    ),
    counter(
        "culex_flow_stuck_total",
        "Subscribers found stuck: no progress in 500 ms, no longer waited for.",
        |c| c.flow_stuck.get(),
    ),
    counter(
        "culex_outbound_waits_total",
        "Times a connection waited for the batches to another shard.",
        |c| c.outbound_waits.get(),
    ),
    counter("culex_mesh_batches_total", "Batches sent to other shards.", |c| c.mesh_batches.get()),
    counter("culex_mesh_messages_total", "Messages sent to other shards, in those batches.", |c| {
        c.mesh_messages.get()
    }),
    gauge("culex_mesh_pending_messages", "Messages waiting to be sent to other shards.", |c| {
        c.mesh_pending.get()
    }),
    counter("culex_sockets_accepted_total", "TCP connections accepted.", |c| c.sockets.get()),
    counter("culex_tls_handshakes_total", "TLS handshakes completed.", |c| c.tls_handshakes.get()),
    counter("culex_tls_handshake_failures_total", "TLS handshakes that failed.", |c| {
        c.tls_handshake_failures.get()
    }),
    counter("culex_connections_accepted_total", "CONNECTs accepted.", |c| c.connections.get()),
    counter("culex_sessions_expired_total", "Sessions ended by their expiry while offline.", |c| {
        c.sessions_expired.get()
    }),
    gauge("culex_clients_connected", "Clients connected.", |c| c.clients_connected.get()),
    gauge("culex_sessions_offline", "Sessions kept for clients that are not connected.", |c| {
        c.clients_disconnected.get()
    }),
    gauge("culex_subscriptions", "Subscriptions, shared ones included.", |c| c.subscriptions.get()),
    gauge("culex_shared_subscriptions", "Shared subscriptions.", |c| c.shared_subscriptions.get()),
    gauge(
        "culex_stored_messages",
        "Messages queued or in flight for sessions, and retained (shard 0).",
        |c| c.stored_messages.get(),
    ),
    gauge("culex_stored_bytes", "Bytes of the stored messages.", |c| c.stored_bytes.get()),
    gauge("culex_retained_messages", "Retained messages (reported by shard 0).", |c| {
        c.retained.get()
    }),
];

/// Serves `addr` on a thread of its own until the process ends. `bridges` gives the bridges
/// running now (a reload adds and removes them); `ready` says whether every shard serves.
pub fn serve(
    listener: TcpListener,
    counters: Arc<[Arc<ShardCounters>]>,
    bridges: fn() -> Vec<Arc<BridgeCounters>>,
    ready: fn(usize) -> bool,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("culex-metrics".into()).spawn(move || {
        tracing::info!(%addr, "metrics listener serving /metrics, /healthz, /readyz");
        for stream in listener.incoming().flatten() {
            if let Err(error) = answer(stream, &counters, bridges, ready) {
                tracing::debug!(%error, "metrics request failed");
            }
        }
    })?;
    Ok(())
}

/// Binds the metrics listener (before privileges are dropped, as every listener is).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

fn answer(
    stream: TcpStream,
    counters: &[Arc<ShardCounters>],
    bridges: fn() -> Vec<Arc<BridgeCounters>>,
    ready: fn(usize) -> bool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(REQUEST_BYTES_MAX));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are read and ignored: nothing in them changes the answer.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(counters, &bridges()))
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if ready(counters.len()) => ("200 OK", "text/plain", "ready\n".into()),
        ("GET", "/readyz") => ("503 Service Unavailable", "text/plain", "starting\n".into()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The text format: each metric once with its HELP and TYPE, a sample per shard.
pub fn render(counters: &[Arc<ShardCounters>], bridges: &[Arc<BridgeCounters>]) -> String {
    let mut out = String::new();
    for metric in METRICS {
        let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind);
        for (shard, counters) in counters.iter().enumerate() {
            let _ =
                writeln!(out, "{}{{shard=\"{shard}\"}} {}", metric.name, (metric.value)(counters));
        }
    }
    // Drops by reason: every shard's sample of each reason; their sum is `$SYS`'s
    // `publish/messages/dropped`.
    let drops = DropReason::ALL.map(|reason| (reason.label(), reason));
    labelled(
        &mut out,
        counters,
        "culex_publish_dropped_total",
        "Messages not delivered, by reason.",
        "reason",
        &drops,
        |reason, c| reason.counter(c).get(),
    );
    let refusals = Refusal::ALL.map(|refusal| (refusal.label(), refusal));
    labelled(
        &mut out,
        counters,
        "culex_connections_refused_total",
        "Connections refused, by reason (CONNACK refusals, and listeners at max_connections).",
        "reason",
        &refusals,
        |refusal, c| refusal.counter(c).get(),
    );
    let levels = [("0", QoS::AtMostOnce), ("1", QoS::AtLeastOnce), ("2", QoS::ExactlyOnce)];
    labelled(
        &mut out,
        counters,
        "culex_publish_received_total",
        "PUBLISH packets received, by QoS.",
        "qos",
        &levels,
        |qos, c| c.publish_received_at(qos).get(),
    );
    labelled(
        &mut out,
        counters,
        "culex_publish_sent_total",
        "PUBLISH packets sent, by QoS.",
        "qos",
        &levels,
        |qos, c| c.publish_sent_at(qos).get(),
    );
    histogram(
        &mut out,
        "culex_store_commit_seconds",
        "How long each store commit took (persistence).",
        1e6,
        counters,
        |c| &c.commit_micros,
    );
    histogram(
        &mut out,
        "culex_store_commit_changes",
        "Changes each store commit wrote: its group commit's size (persistence).",
        1.0,
        counters,
        |c| &c.commit_changes,
    );
    bridge_metrics(&mut out, bridges);
    let (heap, _) = heap_usage();
    let _ = writeln!(out, "# HELP culex_heap_bytes Heap memory the allocator has committed.");
    let _ = writeln!(out, "# TYPE culex_heap_bytes gauge\nculex_heap_bytes {heap}");
    process_metrics(&mut out);
    out
}

/// A histogram per shard; its stored units divided by `per_unit` are the metric's (microseconds
/// by a million: seconds).
fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    per_unit: f64,
    counters: &[Arc<ShardCounters>],
    pick: fn(&ShardCounters) -> &Histogram<N>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (shard, counters) in counters.iter().enumerate() {
        let histogram = pick(counters);
        let (buckets, count) = histogram.cumulative();
        for (bound, at_or_under) in buckets {
            let le = bound as f64 / per_unit;
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {at_or_under}");
        }
        let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {count}");
        let _ =
            writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {}", histogram.sum() as f64 / per_unit);
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {count}");
    }
}

/// Each bridge's link state, links made and messages held for its remote, labelled with its
/// `connection` name.
const BRIDGE_METRICS: &[Metric<BridgeCounters>] = &[
    gauge("culex_bridge_up", "1 while the bridge's link to its remote broker is up.", |b| {
        b.up.get()
    }),
    counter("culex_bridge_links_total", "Links the bridge has established.", |b| b.links.get()),
    gauge(
        "culex_bridge_held_messages",
        "Messages the bridge's local session holds for its remote, queued or in flight.",
        |b| b.held_messages.get(),
    ),
];

/// A counter with a label besides `shard`: one series per shard and label value.
fn labelled<T: Copy>(
    out: &mut String,
    counters: &[Arc<ShardCounters>],
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, T)],
    value: fn(T, &ShardCounters) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (shard, counters) in counters.iter().enumerate() {
        for (text, key) in values {
            let n = value(*key, counters);
            let _ = writeln!(out, "{name}{{shard=\"{shard}\",{label}=\"{text}\"}} {n}");
        }
    }
}

fn bridge_metrics(out: &mut String, bridges: &[Arc<BridgeCounters>]) {
    if bridges.is_empty() {
        return;
    }
    for metric in BRIDGE_METRICS {
        let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind);
        for bridge in bridges {
            let label = label_value(&bridge.name);
            let _ =
                writeln!(out, "{}{{bridge=\"{label}\"}} {}", metric.name, (metric.value)(bridge));
        }
    }
}

/// A label value as the text format writes it: backslash, double quote and line feed escaped.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Prometheus's standard process metrics, from /proc/self.
fn process_metrics(out: &mut String) {
    // SAFETY: sysconf with a valid name has no preconditions.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces), from the 3rd on.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(user), Some(system), true) = (field(14), field(15), ticks > 0) {
            let seconds = (user + system) as f64 / ticks as f64;
            let _ = writeln!(out, "# HELP process_cpu_seconds_total User and system CPU time.");
            let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
            let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
        }
        if let (Some(pages), true) = (field(24), page > 0) {
            let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory.");
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {}", pages * page as u64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# HELP process_open_fds Open file descriptors.");
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_are_labelled_by_name_escaped_as_the_text_format_wants() {
        let bridge = Arc::new(BridgeCounters::new("site \"b\"\\2\n"));
        bridge.up.set(1);
        let mut out = String::new();
        bridge_metrics(&mut out, &[bridge]);
        assert!(out.contains("culex_bridge_up{bridge=\"site \\\"b\\\"\\\\2\\n\"} 1\n"), "{out}");
        assert!(out.contains("# TYPE culex_bridge_links_total counter\n"), "{out}");
    }
}
