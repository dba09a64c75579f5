//! `loadtest`: drives any MQTT broker with a scenario and reports delivered messages per second,
//! latency percentiles and losses; `compare` runs the same scenario against Culex and Mosquitto
//! started with the same configuration, and prints the ratio.

mod accounting;
mod broker;
mod client;
mod scenario;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use culex::protocol::{ProtocolVersion, QoS};

use broker::BrokerProcess;
use scenario::{Outcome, Params, Shape};

#[derive(Parser)]
#[command(name = "loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario against a broker that is already running.
    Run {
        #[arg(long, default_value = "127.0.0.1:1883")]
        broker: String,
        /// Subscribers connect here instead (a broker bridged to --broker).
        #[arg(long)]
        subscribe_to: Option<String>,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Start Culex, then Mosquitto, on the same port with the same config; run the scenario
    /// against each; print both and the ratio.
    Compare {
        #[arg(long, default_value_t = 18830)]
        port: u16,
        #[arg(long)]
        culex: Option<PathBuf>,
        #[arg(long)]
        mosquitto: Option<PathBuf>,
        /// CPUs both brokers are restricted to (taskset list, e.g. "0-1").
        #[arg(long)]
        cpus: Option<String>,
        /// Two nodes of each broker: publishers on 127.0.0.53, subscribers on 127.0.0.88,
        /// the first bridged to the second (`topic loadtest/# out 2`).
        #[arg(long)]
        bridged: bool,
        /// Both brokers with `persistence true`, each on a fresh store directory (Mosquitto
        /// snapshots every `autosave_interval`; Culex writes before acknowledging).
        #[arg(long)]
        persistence: bool,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
}

#[derive(Args, Clone)]
struct ScenarioArgs {
    #[arg(long, value_enum, default_value_t = Shape::Pairs)]
    scenario: Shape,
    /// Publishers (pairs, fan-in) or subscribers (fan-out).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 20: sequence and timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, value_parser = ["3.1.1", "5"], default_value = "3.1.1")]
    mqtt: String,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Messages per publisher, if that comes before the time limit.
    #[arg(long)]
    messages: Option<u64>,
    /// Total publish rate (messages/s); flat out if absent.
    #[arg(long)]
    rate: Option<u64>,
    /// Unacknowledged QoS 1/2 messages per publisher (with MQTT 5, never more than the
    /// broker's Receive Maximum; a 3.1.1 broker cannot say, so keep it within its
    /// max_inflight_messages, 20 by default in Mosquitto and Culex).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Subscribers keep their sessions after disconnecting (3.1.1 clean session 0): the
    /// sessions persistence stores.
    #[arg(long)]
    persistent_sessions: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ScenarioArgs {
    fn params(&self, addr: SocketAddr, subscribe_addr: SocketAddr) -> anyhow::Result<Params> {
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds <= 3600.0,
            "--seconds must be in (0, 3600]"
        );
        Ok(Params {
            addr,
            subscribe_addr,
            shape: self.scenario,
            clients: self.clients.max(1),
            qos: QoS::from_u8(self.qos)?,
            payload_bytes: self.payload,
            version: if self.mqtt == "5" { ProtocolVersion::V5 } else { ProtocolVersion::V311 },
            duration: Duration::from_secs_f64(self.seconds),
            messages_max: self.messages,
            rate: self.rate,
            window: self.window.max(1),
            persistent_sessions: self.persistent_sessions,
        })
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { broker, subscribe_to, scenario } => {
            let resolve = |name: &str| -> anyhow::Result<SocketAddr> {
                name.to_socket_addrs()?.next().with_context(|| format!("no address for {name}"))
            };
            let addr = resolve(&broker)?;
            let subscribe_addr = subscribe_to.as_deref().map(resolve).transpose()?.unwrap_or(addr);
            let outcome = scenario::run(&scenario.params(addr, subscribe_addr)?, &broker)?;
            report(&[outcome], scenario.json);
        }
        Command::Compare { port, culex, mosquitto, cpus, bridged, persistence, scenario } => {
            let brokers = [
                ("culex", culex.unwrap_or_else(broker::default_culex)),
                ("mosquitto", mosquitto.unwrap_or_else(broker::default_mosquitto)),
            ];
            let mut outcomes = Vec::new();
            for (name, command) in brokers {
                let nodes = if bridged {
                    Nodes::bridged(&command, port, cpus.as_deref(), persistence)?
                } else {
                    Nodes::single(&command, port, cpus.as_deref(), persistence)?
                };
                let params = scenario.params(nodes.publish_addr, nodes.subscribe_addr)?;
                let before = nodes.usage();
                let mut outcome = scenario::run(&params, name)?;
                if let (Some(before), Some(after)) = (before, nodes.usage()) {
                    let millions = outcome.received as f64 / 1e6;
                    if millions > 0.0 {
                        outcome.broker_cpu_s_per_million =
                            Some((after.cpu_seconds - before.cpu_seconds) / millions);
                    }
                    outcome.broker_peak_rss_mb = Some(after.peak_rss_mb);
                }
                nodes.stop();
                outcomes.push(outcome);
            }
            report(&outcomes, scenario.json);
            if let [culex, mosquitto] = &outcomes[..] {
                if !scenario.json {
                    println!(
                        "ratio culex/mosquitto: throughput {:.2}x, p99 latency {:.2}x",
                        culex.msgs_per_sec / mosquitto.msgs_per_sec.max(1e-9),
                        culex.latency_us.p99 / mosquitto.latency_us.p99.max(1e-9)
                    );
                }
            }
        }
    }
    Ok(())
}

/// The options both brokers understand; queues large enough not to drop under load. With a
/// store directory, persistence on.
fn base_config(port: u16, host: &str, store: Option<&Path>) -> String {
    let mut config = format!(
        "listener {port} {host}\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n"
    );
    if let Some(dir) = store {
        config += &format!("persistence true\npersistence_location {}/\n", dir.display());
    }
    config
}

/// The broker processes of one side of a comparison: one node, or two bridged.
struct Nodes {
    processes: Vec<(BrokerProcess, SocketAddr)>,
    /// Store directories (with --persistence), removed with the nodes.
    _stores: Vec<tempfile::TempDir>,
    publish_addr: SocketAddr,
    subscribe_addr: SocketAddr,
}

impl Nodes {
    fn single(
        command: &Path,
        port: u16,
        cpus: Option<&str>,
        persistence: bool,
    ) -> anyhow::Result<Nodes> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stores = stores(persistence, 1)?;
        let config = base_config(port, "127.0.0.1", stores.first().map(|d| d.path()));
        let process = BrokerProcess::start(command, &config, addr, cpus)?;
        Ok(Nodes {
            processes: vec![(process, addr)],
            _stores: stores,
            publish_addr: addr,
            subscribe_addr: addr,
        })
    }

    /// The subscribers' node first, then the publishers' node bridged to it; returns once a
    /// message crosses the bridge.
    fn bridged(
        command: &Path,
        port: u16,
        cpus: Option<&str>,
        persistence: bool,
    ) -> anyhow::Result<Nodes> {
        let leaf = SocketAddr::from(([127, 0, 0, 88], port));
        let master = SocketAddr::from(([127, 0, 0, 53], port));
        let stores = stores(persistence, 2)?;
        let store = |i: usize| stores.get(i).map(|d| d.path());
        let leaf_process =
            BrokerProcess::start(command, &base_config(port, "127.0.0.88", store(0)), leaf, cpus)?;
        let bridge = format!(
            "connection loadtest\naddress {leaf}\ntopic loadtest/# out 2\ncleansession true\n\
             restart_timeout 1\n"
        );
        let master_config = base_config(port, "127.0.0.53", store(1)) + &bridge;
        let master_process = BrokerProcess::start(command, &master_config, master, cpus)?;
        scenario::await_bridge(master, leaf)?;
        Ok(Nodes {
            processes: vec![(master_process, master), (leaf_process, leaf)],
            _stores: stores,
            publish_addr: master,
            subscribe_addr: leaf,
        })
    }

    /// CPU time and peak memory of all the nodes together.
    fn usage(&self) -> Option<broker::Usage> {
        self.processes.iter().map(|(p, _)| p.usage()).try_fold(
            broker::Usage { cpu_seconds: 0.0, peak_rss_mb: 0.0 },
            |total, usage| {
                let usage = usage?;
                Some(broker::Usage {
                    cpu_seconds: total.cpu_seconds + usage.cpu_seconds,
                    peak_rss_mb: total.peak_rss_mb + usage.peak_rss_mb,
                })
            },
        )
    }

    fn stop(self) {
        for (process, addr) in self.processes {
            process.stop(addr);
        }
    }
}

/// `count` fresh store directories, or none without persistence.
fn stores(persistence: bool, count: usize) -> anyhow::Result<Vec<tempfile::TempDir>> {
    let wanted = if persistence { count } else { 0 };
    (0..wanted).map(|_| Ok(tempfile::tempdir()?)).collect()
}

fn report(outcomes: &[Outcome], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(outcomes).unwrap_or_default());
        return;
    }
    println!(
        "{:<10} {:<8} {:>3} {:>6} {:>4}/{:<4} {:>10} {:>10} {:>6} {:>4} {:>5} {:>11} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "broker", "scenario", "qos", "bytes", "pub", "sub", "sent", "received", "lost", "dup", "reord",
        "msgs/s", "MB/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "cpu s/M", "rss MB"
    );
    for o in outcomes {
        let optional = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<10} {:<8} {:>3} {:>6} {:>4}/{:<4} {:>10} {:>10} {:>6} {:>4} {:>5} {:>11.0} {:>7.2} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7} {:>7}",
            o.broker,
            format!("{:?}", o.scenario).to_lowercase(),
            o.qos,
            o.payload_bytes,
            o.publishers,
            o.subscribers,
            o.sent,
            o.received,
            o.lost,
            o.duplicates,
            o.out_of_order,
            o.msgs_per_sec,
            o.mb_per_sec,
            o.latency_us.p50,
            o.latency_us.p90,
            o.latency_us.p99,
            o.latency_us.p999,
            o.latency_us.max,
            optional(o.broker_cpu_s_per_million),
            optional(o.broker_peak_rss_mb),
        );
    }
}
