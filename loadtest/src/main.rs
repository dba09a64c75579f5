//! `loadtest`: drives any MQTT broker with a scenario and reports delivered messages per second,
//! latency percentiles and losses; `compare` runs the same scenario against Culex and Mosquitto
//! started with the same configuration (and any other broker from its command line), and prints
//! the ratio.

mod accounting;
mod broker;
mod client;
mod fleet;
mod lifecycle;
mod plot;
mod progress;
mod relay;
mod scenario;
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use culex::protocol::{ProtocolVersion, QoS};

use broker::BrokerProcess;
use client::Target;
use fleet::FleetShape;
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
        /// The broker's process id, to report its CPU and memory (per connection in
        /// `connections`).
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Connect through TLS, trusting the CA certificates in this file.
        #[arg(long, value_name = "CAFILE")]
        tls: Option<PathBuf>,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Start Culex, then Mosquitto, on the same port with the same config, then each --other
    /// broker; run the scenario against each; print them all and Culex's ratio to Mosquitto.
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
        /// A third row: the baseline relay in this process (QoS 0; see loadtest/README.md).
        #[arg(long)]
        relay: bool,
        /// Both brokers serve TLS, with a certificate made for the run (`openssl`), and the
        /// clients connect through it.
        #[arg(long)]
        tls: bool,
        /// The key of that certificate.
        #[arg(long, value_enum, default_value_t = tls::KeyKind::Ecdsa)]
        tls_key: tls::KeyKind,
        /// A configuration line both brokers get besides the run's own (repeatable), e.g.
        /// "set_tcp_nodelay true".
        #[arg(long = "config-line", value_name = "LINE")]
        config_lines: Vec<String>,
        /// Another broker, run after those two with its own configuration, from a command
        /// line (run by `sh`; `{port}` in it becomes --port), e.g.
        /// "rumqttd=rumqttd --config loadtest/rumqttd.toml" (repeatable; plain TCP only).
        #[arg(long = "other", value_name = "NAME=COMMAND", value_parser = other_broker)]
        others: Vec<(String, String)>,
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
    /// Run a scenario against the baseline relay in this process: the most the load generator
    /// can drive and measure on this machine (QoS 0).
    Baseline {
        #[command(flatten)]
        scenario: ScenarioArgs,
    },
}

#[derive(Args, Clone)]
struct ScenarioArgs {
    #[arg(long, value_enum, default_value_t = Shape::Pairs)]
    scenario: Shape,
    /// Publishers (pairs, fan-in, shared: as many subscribers in the group), subscribers
    /// (fan-out), connections (connections, churn).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 20: sequence and timestamp).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Topics each publisher cycles through (pairs and fan-out subscribe to each by name).
    #[arg(long, default_value_t = 1)]
    topics: usize,
    #[arg(long, value_parser = ["3.1", "3.1.1", "5"], default_value = "3.1.1")]
    mqtt: String,
    /// Seconds of publishing before measuring: checked for loss, left out of the figures.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds of publishing that are measured (after the warm-up).
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
    /// `fleet`: telemetry messages per second per device.
    #[arg(long, default_value_t = 1.0)]
    device_rate: f64,
    /// `fleet`: commands per second the backend sends each device.
    #[arg(long, default_value_t = 1.0)]
    command_rate: f64,
    /// `fleet`: levels of a telemetry topic (at least 3, `fleet/<device>/tele`).
    #[arg(long, default_value_t = 3)]
    depth: usize,
    /// Clients connect over WebSockets (`compare`: both brokers' listener is
    /// `protocol websockets`).
    #[arg(long)]
    websockets: bool,
    /// With TLS, the only version clients offer (both when absent).
    #[arg(long, value_enum)]
    tls_version: Option<tls::Version>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write the latency-percentile plot of the run(s) to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl ScenarioArgs {
    /// The run's parameters; with `cafile`, clients connect through TLS trusting it.
    fn params(
        &self,
        addr: SocketAddr,
        subscribe_addr: SocketAddr,
        cafile: Option<&Path>,
        broker_pid: Option<u32>,
    ) -> anyhow::Result<Params> {
        let tls = cafile.map(|cafile| tls::client_config(cafile, self.tls_version)).transpose()?;
        anyhow::ensure!(
            self.seconds > 0.0 && self.seconds <= 3600.0,
            "--seconds must be in (0, 3600]"
        );
        anyhow::ensure!((0.0..=600.0).contains(&self.warmup), "--warmup must be in [0, 600]");
        anyhow::ensure!((1..=100_000).contains(&self.topics), "--topics must be in [1, 100000]");
        Ok(Params {
            target: Target { addr, tls: tls.clone(), websockets: self.websockets },
            subscribe_target: Target { addr: subscribe_addr, tls, websockets: self.websockets },
            broker_pid,
            shape: self.scenario,
            clients: self.clients.max(1),
            qos: QoS::from_u8(self.qos)?,
            payload_bytes: self.payload,
            topics: self.topics,
            version: match self.mqtt.as_str() {
                "3.1" => ProtocolVersion::V31,
                "5" => ProtocolVersion::V5,
                _ => ProtocolVersion::V311,
            },
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.seconds),
            messages_max: self.messages,
            rate: self.rate,
            window: self.window.max(1),
            persistent_sessions: self.persistent_sessions,
            fleet: FleetShape {
                device_rate: self.device_rate,
                command_rate: self.command_rate,
                depth: self.depth,
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    raise_open_files_limit();
    match Cli::parse().command {
        Command::Run { broker, subscribe_to, broker_pid, tls, scenario } => {
            let resolve = |name: &str| -> anyhow::Result<SocketAddr> {
                name.to_socket_addrs()?.next().with_context(|| format!("no address for {name}"))
            };
            let addr = resolve(&broker)?;
            let subscribe_addr = subscribe_to.as_deref().map(resolve).transpose()?.unwrap_or(addr);
            let params = scenario.params(addr, subscribe_addr, tls.as_deref(), broker_pid)?;
            let watched = broker_pid.map(Watched::Process);
            let outcome = measure(&params, &broker, watched.as_ref())?;
            finish(&[outcome], &scenario)?;
        }
        Command::Baseline { scenario } => {
            let outcome = run_on_relay(&scenario)?;
            finish(&[outcome], &scenario)?;
        }
        Command::Compare {
            port,
            culex,
            mosquitto,
            cpus,
            bridged,
            persistence,
            relay,
            tls,
            tls_key,
            config_lines,
            others,
            scenario,
        } => {
            anyhow::ensure!(
                !relay || !(bridged || persistence || tls),
                "--relay has no bridge, persistence or TLS: run it without them"
            );
            anyhow::ensure!(
                !(bridged && scenario.scenario == Shape::Fleet),
                "--bridged does not apply to the fleet scenario"
            );
            anyhow::ensure!(
                !(bridged && (tls || scenario.websockets)),
                "--tls and --websockets do not apply to --bridged runs yet"
            );
            anyhow::ensure!(
                others.is_empty() || !(bridged || persistence || tls || scenario.websockets),
                "--other brokers configure themselves: run them without --bridged, \
                 --persistence, --tls or --websockets"
            );
            let certificates = tls.then(|| tls::Certificates::generate(tls_key)).transpose()?;
            let mut extra: String = config_lines.iter().map(|line| format!("{line}\n")).collect();
            if scenario.websockets {
                // Mosquitto 2.0 (libwebsockets) will not start with a WebSocket listener alone
                // (eclipse-mosquitto/mosquitto#2284): both get an MQTT listener beside it.
                let plain = port.checked_add(1).context("--port leaves no room")?;
                extra.push_str(&format!("protocol websockets\nlistener {plain} 127.0.0.1\n"));
            }
            let brokers = [
                ("culex", culex.unwrap_or_else(broker::default_culex)),
                ("mosquitto", mosquitto.unwrap_or_else(broker::default_mosquitto)),
            ];
            let mut outcomes = Vec::new();
            let mut run_on = |name: &str, nodes: Nodes| -> anyhow::Result<()> {
                let publisher_node = nodes.processes.first().map(|(p, _)| p.pid());
                let cafile = certificates.as_ref().map(|c| c.ca.as_path());
                let (publish, subscribe) = (nodes.publish_addr, nodes.subscribe_addr);
                let params = scenario.params(publish, subscribe, cafile, publisher_node)?;
                let outcome = measure(&params, name, Some(&Watched::Nodes(&nodes)));
                nodes.stop();
                outcomes.push(outcome?);
                Ok(())
            };
            for (name, command) in brokers {
                let nodes = if bridged {
                    Nodes::bridged(&command, port, cpus.as_deref(), persistence, &extra)?
                } else {
                    let tls = certificates.as_ref();
                    Nodes::single(&command, port, cpus.as_deref(), persistence, tls, &extra)?
                };
                run_on(name, nodes)?;
            }
            for (name, command_line) in &others {
                run_on(name, Nodes::command_line(command_line, port, cpus.as_deref())?)?;
            }
            if relay {
                outcomes.push(run_on_relay(&scenario)?);
            }
            finish(&outcomes, &scenario)?;
            if let [culex, mosquitto, ..] = &outcomes[..] {
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

/// Whose CPU time and memory a run reports.
enum Watched<'a> {
    Process(u32),
    Nodes(&'a Nodes),
}

impl Watched<'_> {
    fn usage(&self) -> Option<broker::Usage> {
        match self {
            Watched::Process(pid) => broker::usage_of(*pid),
            Watched::Nodes(nodes) => nodes.usage(),
        }
    }
}

/// Runs the scenario and adds the CPU time (per million messages) of the broker and of the
/// load generator itself, and the broker's peak memory.
fn measure(params: &Params, name: &str, broker: Option<&Watched>) -> anyhow::Result<Outcome> {
    let own_pid = std::process::id();
    let before = (broker.and_then(Watched::usage), broker::usage_of(own_pid));
    let mut outcome = scenario::run(params, name)?;
    let after = (broker.and_then(Watched::usage), broker::usage_of(own_pid));
    let per_million = |cpu_seconds: f64| {
        let millions = outcome.received as f64 / 1e6;
        (millions > 0.0).then(|| cpu_seconds / millions)
    };
    // A scenario that measured its CPU over a narrower span (`fleet`) keeps its figures.
    if let (Some(before), Some(after)) = (before.0, after.0) {
        if outcome.broker_cpu_s_per_million.is_none() {
            outcome.broker_cpu_s_per_million = per_million(after.cpu_seconds - before.cpu_seconds);
        }
        outcome.broker_peak_rss_mb = Some(after.peak_rss_mb);
    }
    if let (Some(before), Some(after)) = (before.1, after.1) {
        if outcome.loadtest_cpu_s_per_million.is_none() {
            outcome.loadtest_cpu_s_per_million =
                per_million(after.cpu_seconds - before.cpu_seconds);
        }
    }
    Ok(outcome)
}

/// The scenario against the relay in this process. Its threads' CPU time is the broker's,
/// taken out of the load generator's.
fn run_on_relay(scenario: &ScenarioArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(scenario.qos == 0, "the relay forwards QoS 0 only");
    anyhow::ensure!(!scenario.websockets, "the relay speaks MQTT over TCP only");
    let relay = relay::Relay::start()?;
    let params = scenario.params(relay.addr(), relay.addr(), None, None)?;
    let outcome = measure(&params, "relay", None);
    let relay_cpu = relay.stop();
    let mut outcome = outcome?;
    let millions = outcome.received as f64 / 1e6;
    if millions > 0.0 {
        let relay_per_million = relay_cpu / millions;
        outcome.broker_cpu_s_per_million = Some(relay_per_million);
        outcome.loadtest_cpu_s_per_million =
            outcome.loadtest_cpu_s_per_million.map(|own| own - relay_per_million);
    }
    Ok(outcome)
}

/// Prints the outcomes and writes the plot if asked.
fn finish(outcomes: &[Outcome], scenario: &ScenarioArgs) -> anyhow::Result<()> {
    report(outcomes, scenario.json);
    if let Some(path) = &scenario.plot {
        plot::latency(outcomes, path)?;
    }
    Ok(())
}

/// Ten thousand idle connections need as many descriptors here and in the brokers we start.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit to read into and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
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
        tls: Option<&tls::Certificates>,
        extra: &str,
    ) -> anyhow::Result<Nodes> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stores = stores(persistence, 1)?;
        let mut config = base_config(port, "127.0.0.1", stores.first().map(|d| d.path()));
        if let Some(certificates) = tls {
            config += &certificates.listener_lines();
        }
        config += extra;
        let process = BrokerProcess::start(command, &config, addr, cpus)?;
        Ok(Nodes {
            processes: vec![(process, addr)],
            _stores: stores,
            publish_addr: addr,
            subscribe_addr: addr,
        })
    }

    /// One broker started from its own command line (`--other`).
    fn command_line(command_line: &str, port: u16, cpus: Option<&str>) -> anyhow::Result<Nodes> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let process = BrokerProcess::start_command_line(command_line, addr, cpus)?;
        Ok(Nodes {
            processes: vec![(process, addr)],
            _stores: Vec::new(),
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
        extra: &str,
    ) -> anyhow::Result<Nodes> {
        let leaf = SocketAddr::from(([127, 0, 0, 88], port));
        let master = SocketAddr::from(([127, 0, 0, 53], port));
        let stores = stores(persistence, 2)?;
        let store = |i: usize| stores.get(i).map(|d| d.path());
        let leaf_config = base_config(port, "127.0.0.88", store(0)) + extra;
        let leaf_process = BrokerProcess::start(command, &leaf_config, leaf, cpus)?;
        let bridge = format!(
            "connection loadtest\naddress {leaf}\ntopic loadtest/# out 2\ncleansession true\n\
             restart_timeout 1\n"
        );
        let master_config = base_config(port, "127.0.0.53", store(1)) + extra + &bridge;
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
    pub fn usage(&self) -> Option<broker::Usage> {
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

/// `--other NAME=COMMAND`: a row's name and the command line that starts the broker.
fn other_broker(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
            Ok((name.trim().to_string(), command.trim().to_string()))
        }
        _ => Err(format!("expected NAME=COMMAND, got {value:?}")),
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
    let (fleets, others): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.fleet.is_some());
    let (traffic, lifecycle): (Vec<&Outcome>, Vec<&Outcome>) =
        others.into_iter().partition(|o| o.scenario.is_traffic());
    print_table(&traffic, &traffic_columns());
    print_table(&lifecycle, &lifecycle_columns());
    print_table(&fleets, &fleet_columns());
}

/// One column of a printed table: its header, its width and side, and a row's value in it.
struct Column {
    header: String,
    width: usize,
    left: bool,
    value: fn(&Outcome) -> String,
}

fn right(header: &str, width: usize, value: fn(&Outcome) -> String) -> Column {
    Column { header: header.to_string(), width, left: false, value }
}

fn left(header: &str, width: usize, value: fn(&Outcome) -> String) -> Column {
    Column { left: true, ..right(header, width, value) }
}

/// The header and one line per outcome, columns a space apart; nothing without outcomes.
fn print_table(rows: &[&Outcome], columns: &[Column]) {
    if rows.is_empty() {
        return;
    }
    let line = |cell: &dyn Fn(&Column) -> String| {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match c.left {
                true => format!("{:<w$}", cell(c), w = c.width),
                false => format!("{:>w$}", cell(c), w = c.width),
            })
            .collect();
        cells.join(" ")
    };
    println!("{}", line(&|c| c.header.clone()));
    for row in rows {
        println!("{}", line(&|c| (c.value)(row)));
    }
}

fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The latency columns every table has, from `p50` on.
fn latency_columns(with_p90: bool) -> Vec<Column> {
    let mut columns = vec![right("p50 us", 8, |o| format!("{:.0}", o.latency_us.p50))];
    if with_p90 {
        columns.push(right("p90 us", 8, |o| format!("{:.0}", o.latency_us.p90)));
    }
    columns.extend([
        right("p99 us", 8, |o| format!("{:.0}", o.latency_us.p99)),
        right("p99.9 us", 8, |o| format!("{:.0}", o.latency_us.p999)),
        right("max us", 8, |o| format!("{:.0}", o.latency_us.max)),
    ]);
    columns
}

fn traffic_columns() -> Vec<Column> {
    let mut columns = vec![
        left("broker", 10, |o| o.broker.clone()),
        left("scenario", 8, |o| o.scenario.name().to_string()),
        right("mqtt", 5, |o| o.mqtt.to_string()),
        right("qos", 3, |o| o.qos.to_string()),
        right("bytes", 6, |o| o.payload_bytes.to_string()),
        Column {
            header: format!("{:>4}/{:<4}", "pub", "sub"),
            width: 9,
            left: false,
            value: |o| format!("{:>4}/{:<4}", o.publishers, o.subscribers),
        },
        right("sent", 10, |o| o.sent.to_string()),
        right("received", 10, |o| o.received.to_string()),
        right("lost", 6, |o| o.lost.to_string()),
        right("dup", 4, |o| o.duplicates.to_string()),
        right("reord", 5, |o| o.out_of_order.to_string()),
        right("msgs/s", 11, |o| format!("{:.0}", o.msgs_per_sec)),
        right("MB/s", 7, |o| format!("{:.2}", o.mb_per_sec)),
    ];
    columns.extend(latency_columns(true));
    columns.extend([
        right("cpu s/M", 7, |o| optional(o.broker_cpu_s_per_million)),
        right("rss MB", 7, |o| optional(o.broker_peak_rss_mb)),
        right("lt s/M", 7, |o| optional(o.loadtest_cpu_s_per_million)),
    ]);
    columns
}

/// Connections, churn and handshakes: `sent` counts the attempts, `received` those done.
fn lifecycle_columns() -> Vec<Column> {
    let mut columns = vec![
        left("broker", 10, |o| o.broker.clone()),
        left("scenario", 11, |o| o.scenario.name().to_string()),
        right("mqtt", 5, |o| o.mqtt.to_string()),
        right("tried", 8, |o| o.sent.to_string()),
        right("done", 8, |o| o.received.to_string()),
        right("failed", 6, |o| o.lost.to_string()),
        right("per s", 9, |o| format!("{:.0}", o.msgs_per_sec)),
    ];
    columns.extend(latency_columns(false));
    columns.extend([
        right("cpu s/M", 7, |o| optional(o.broker_cpu_s_per_million)),
        right("rss MB", 7, |o| optional(o.broker_peak_rss_mb)),
        right("KiB/conn", 9, |o| optional(o.broker_rss_per_connection_kb)),
        right("by p99 us", 10, |o| optional(o.bystander_latency_us.as_ref().map(|p| p.p99))),
    ]);
    columns
}

/// A fleet outcome's own figures (the fleet table has no other rows).
fn figures(outcome: &Outcome) -> &fleet::FleetFigures {
    outcome.fleet.as_ref().expect("only fleet outcomes go into the fleet table")
}

fn fleet_columns() -> Vec<Column> {
    let mut columns = vec![
        left("broker", 10, |o| o.broker.clone()),
        right("devices", 7, |o| figures(o).devices_connected.to_string()),
        right("qos", 3, |o| o.qos.to_string()),
        right("tele sent", 9, |o| figures(o).telemetry_sent.to_string()),
        right("tele got", 9, |o| figures(o).telemetry_received.to_string()),
        right("cmd sent", 9, |o| figures(o).commands_sent.to_string()),
        right("cmd got", 9, |o| figures(o).commands_received.to_string()),
        right("dup", 5, |o| o.duplicates.to_string()),
        right("msgs/s", 9, |o| format!("{:.0}", o.msgs_per_sec)),
    ];
    columns.extend(latency_columns(false));
    columns.extend([
        right("cpu us/m", 8, |o| optional(o.broker_cpu_s_per_million)),
        right("rss MB", 7, |o| optional(o.broker_peak_rss_mb)),
        right("KiB/conn", 9, |o| optional(o.broker_rss_per_connection_kb)),
        right("connect s", 9, |o| format!("{:.2}", figures(o).connect_seconds)),
        right("lt us/m", 7, |o| optional(o.loadtest_cpu_s_per_million)),
        right("by p99 us", 9, |o| optional(o.bystander_latency_us.as_ref().map(|p| p.p99))),
    ]);
    columns
}
