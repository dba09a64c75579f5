//! `loadtest`: drives any MQTT broker with a scenario and reports delivered messages per second,
//! latency percentiles and losses; `compare` runs the same scenario against Culex and Mosquitto
//! started with the same configuration, and prints the ratio.

mod accounting;
mod broker;
mod client;
mod scenario;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
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
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ScenarioArgs {
    fn params(&self, addr: SocketAddr) -> anyhow::Result<Params> {
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds <= 3600.0,
            "--seconds must be in (0, 3600]"
        );
        Ok(Params {
            addr,
            shape: self.scenario,
            clients: self.clients.max(1),
            qos: QoS::from_u8(self.qos)?,
            payload_bytes: self.payload,
            version: if self.mqtt == "5" { ProtocolVersion::V5 } else { ProtocolVersion::V311 },
            duration: Duration::from_secs_f64(self.seconds),
            messages_max: self.messages,
            rate: self.rate,
            window: self.window.max(1),
        })
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { broker, scenario } => {
            let addr = broker.to_socket_addrs()?.next().context("no address for --broker")?;
            let outcome = scenario::run(&scenario.params(addr)?, &broker)?;
            report(&[outcome], scenario.json);
        }
        Command::Compare { port, culex, mosquitto, cpus, scenario } => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let params = scenario.params(addr)?;
            // The options both brokers understand; queues large enough not to drop under load.
            let config = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0\n"
            );
            let brokers = [
                ("culex", culex.unwrap_or_else(broker::default_culex)),
                ("mosquitto", mosquitto.unwrap_or_else(broker::default_mosquitto)),
            ];
            let mut outcomes = Vec::new();
            for (name, command) in brokers {
                let process = BrokerProcess::start(&command, &config, addr, cpus.as_deref())?;
                let before = process.usage();
                let mut outcome = scenario::run(&params, name)?;
                if let (Some(before), Some(after)) = (before, process.usage()) {
                    let millions = outcome.received as f64 / 1e6;
                    if millions > 0.0 {
                        outcome.broker_cpu_s_per_million =
                            Some((after.cpu_seconds - before.cpu_seconds) / millions);
                    }
                    outcome.broker_peak_rss_mb = Some(after.peak_rss_mb);
                }
                process.stop(addr);
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
