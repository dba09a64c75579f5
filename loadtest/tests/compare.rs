//! Every scenario, through `loadtest compare`, against the real Culex and Mosquitto brokers: each
//! must deliver every message once and in order and report its figures. Small, bounded runs:
//! these check the instrument, not the brokers' speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

/// `compare` uses one port for every broker it starts: one run at a time.
static PORT: Mutex<u16> = Mutex::new(18_931);

/// Culex's binary, built by `cargo test --workspace` next to this package's.
fn culex() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_loadtest")).parent().expect("target dir").to_owned();
    let culex = dir.join("culex");
    assert!(culex.exists(), "{} is missing: run `cargo test --workspace`", culex.display());
    culex
}

/// Mosquitto's binary; without it the test is skipped loudly, or fails under CI.
fn mosquitto() -> Option<PathBuf> {
    let found = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mosquitto is not installed, and CI=true requires it"
        );
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
    }
    found
}

/// Runs `loadtest compare --json` with `args` and returns one JSON object per broker.
fn compare(args: &[&str]) -> Option<Vec<Value>> {
    let mosquitto = mosquitto()?;
    let port = PORT.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("compare")
        .args(["--port", &port.to_string(), "--json"])
        .arg("--culex")
        .arg(culex())
        .arg("--mosquitto")
        .arg(mosquitto)
        .args(args)
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadtest compare {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcomes: Vec<Value> = serde_json::from_str(&stdout).expect("JSON outcomes");
    let brokers: Vec<&str> = outcomes.iter().filter_map(|o| o["broker"].as_str()).collect();
    assert_eq!(brokers[..2], ["culex", "mosquitto"]);
    Some(outcomes)
}

fn number(outcome: &Value, field: &str) -> f64 {
    outcome[field].as_f64().unwrap_or_else(|| panic!("{field} missing in {outcome}"))
}

/// Every message was received once, in order, and the figures are there.
fn assert_delivered_all(outcomes: &[Value], expected: f64) {
    for o in outcomes {
        assert_eq!(number(o, "expected"), expected, "{o}");
        assert_eq!(number(o, "received"), expected, "{o}");
        for field in ["lost", "duplicates", "out_of_order"] {
            assert_eq!(number(o, field), 0.0, "{field}: {o}");
        }
        assert!(number(o, "msgs_per_sec") > 0.0, "{o}");
        assert!(number(&o["latency_us"], "p99") > 0.0, "{o}");
        assert!(o["loadtest_cpu_s_per_million"].is_number(), "{o}");
        if o["broker"] != "relay" {
            assert!(o["broker_cpu_s_per_million"].is_number(), "{o}");
            assert!(number(o, "broker_peak_rss_mb") > 1.0, "{o}");
        }
    }
}

const SHORT: [&str; 6] = ["--clients", "3", "--messages", "500", "--seconds", "20"];

#[test]
fn pairs_fan_in_fan_out_and_shared_deliver_everything_on_both_brokers() {
    for (scenario, subscribers_per_message) in
        [("pairs", 1.0), ("fan-in", 1.0), ("fan-out", 3.0), ("shared", 1.0)]
    {
        let publishers = if scenario == "fan-out" { 1.0 } else { 3.0 };
        let Some(outcomes) =
            compare(&[&["--scenario", scenario, "--qos", "1"][..], &SHORT].concat())
        else {
            return;
        };
        assert_delivered_all(&outcomes, 500.0 * publishers * subscribers_per_message);
    }
}

#[test]
fn qos_2_mqtt_5_topics_and_warm_up() {
    let args = [
        &["--scenario", "pairs", "--qos", "2", "--mqtt", "5", "--topics", "20"][..],
        // 1,000 msg/s per publisher: 0.5 s of publishing, the first 0.2 s not measured.
        &["--warmup", "0.2", "--rate", "3000", "--window", "16"],
        &SHORT,
    ]
    .concat();
    let Some(outcomes) = compare(&args) else { return };
    assert_delivered_all(&outcomes, 1500.0);
    for o in &outcomes {
        let measured = number(o, "msgs_per_sec") * number(o, "seconds");
        assert!((600.0..1400.0).contains(&measured), "the warm-up's messages left out: {o}");
        assert_eq!((o["topics"].as_u64(), o["mqtt"].as_str()), (Some(20), Some("5")));
    }
}

#[test]
fn bridged_delivers_through_the_bridge_on_both_brokers() {
    let args = [&["--bridged", "--scenario", "pairs", "--qos", "1"][..], &SHORT].concat();
    let Some(outcomes) = compare(&args) else { return };
    assert_delivered_all(&outcomes, 1500.0);
}

#[test]
fn relay_baseline_runs_beside_both_brokers_and_is_plotted() {
    let plot = tempfile::NamedTempFile::with_suffix(".svg").expect("temp file");
    let plot_path = plot.path().to_str().expect("utf-8 path");
    let args =
        [&["--relay", "--scenario", "fan-out", "--qos", "0", "--plot", plot_path][..], &SHORT]
            .concat();
    let Some(outcomes) = compare(&args) else { return };
    assert_eq!(outcomes[2]["broker"], "relay");
    assert_delivered_all(&outcomes, 1500.0);
    let svg = std::fs::read_to_string(plot.path()).expect("plot written");
    for broker in ["culex", "mosquitto", "relay"] {
        assert!(svg.contains(broker), "{broker} in the legend");
    }
}

#[test]
fn connections_report_memory_per_connection_and_churn_completes_cycles() {
    let Some(outcomes) = compare(&["--scenario", "connections", "--clients", "300"]) else {
        return;
    };
    for o in &outcomes {
        assert_eq!((number(o, "received"), number(o, "lost")), (300.0, 0.0), "{o}");
        let per_connection = number(o, "broker_rss_per_connection_kb");
        assert!((0.0..1024.0).contains(&per_connection), "{o}");
    }
    let churn = ["--scenario", "churn", "--clients", "2", "--messages", "50", "--seconds", "20"];
    let Some(outcomes) = compare(&churn) else { return };
    for o in &outcomes {
        assert_eq!((number(o, "received"), number(o, "lost")), (100.0, 0.0), "{o}");
        assert!(number(&o["latency_us"], "p50") > 0.0, "{o}");
    }
}

#[test]
fn websockets_carry_every_message_over_ws_and_wss() {
    for tls in [&[][..], &["--tls"][..]] {
        let args =
            [&["--websockets", "--scenario", "fan-in", "--qos", "1"][..], tls, &SHORT].concat();
        let Some(outcomes) = compare(&args) else { return };
        assert_delivered_all(&outcomes, 3.0 * 500.0);
    }
}

#[test]
fn tls_carries_traffic_and_handshakes_are_timed_with_a_bystander() {
    let tls = ["--tls", "--config-line", "set_tcp_nodelay true"];
    let Some(outcomes) =
        compare(&[&tls[..], &["--scenario", "pairs", "--qos", "1"], &SHORT].concat())
    else {
        return;
    };
    assert_delivered_all(&outcomes, 3.0 * 500.0);
    for key in ["ecdsa", "rsa"] {
        let handshakes = ["--scenario", "handshakes", "--tls-key", key, "--clients", "2"];
        let limits = ["--messages", "30", "--seconds", "20", "--tls-version", "1.2"];
        let Some(outcomes) = compare(&[&tls[..], &handshakes, &limits].concat()) else { return };
        for o in &outcomes {
            assert_eq!((number(o, "received"), number(o, "lost")), (60.0, 0.0), "{o}");
            assert!(number(&o["bystander_latency_us"], "p99") > 0.0, "{o}");
        }
    }
}

#[test]
fn fleet_delivers_telemetry_and_commands_and_reports_its_figures() {
    // 200 devices, one telemetry message and one command each a second, for 2 s after 0.5 s of
    // warm-up: about 500 of each (a device's ticks are spread over the first second), all of
    // them delivered on both brokers.
    let args = ["--scenario", "fleet", "--clients", "200", "--qos", "1"];
    let Some(outcomes) = compare(&[&args[..], &["--warmup", "0.5", "--seconds", "2"]].concat())
    else {
        return;
    };
    for o in &outcomes {
        let fleet = &o["fleet"];
        assert_eq!(number(fleet, "devices_connected"), 200.0, "{o}");
        for (sent, received) in
            [("telemetry_sent", "telemetry_received"), ("commands_sent", "commands_received")]
        {
            assert!((490.0..=510.0).contains(&number(fleet, sent)), "{o}");
            assert_eq!(number(fleet, received), number(fleet, sent), "{o}");
        }
        for field in ["lost", "duplicates", "out_of_order"] {
            assert_eq!(number(o, field), 0.0, "{field}: {o}");
        }
        assert!(number(&fleet["telemetry_latency_us"], "p99") > 0.0, "{o}");
        assert!(number(&fleet["command_latency_us"], "p99") > 0.0, "{o}");
        assert!(number(fleet, "connect_seconds") > 0.0, "{o}");
        assert!(number(o, "broker_cpu_s_per_million") > 0.0, "{o}");
        assert!(number(o, "broker_rss_per_connection_kb") >= 0.0, "{o}");
        assert!(o["loadtest_cpu_s_per_million"].is_number(), "{o}");
    }
}

#[test]
fn another_broker_from_its_command_line_gets_a_row_of_its_own() {
    let Some(mosquitto) = mosquitto() else { return };
    // Mosquitto again, configured by its own command line alone, as a third row.
    let other = format!("mosquitto -p={} -p {{port}}", mosquitto.display());
    let fan_in = ["--other", &other, "--scenario", "fan-in", "--qos", "1", "--window", "16"];
    let Some(outcomes) = compare(&[&fan_in[..], &SHORT].concat()) else { return };
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[2]["broker"], "mosquitto -p");
    assert_delivered_all(&outcomes[..2], 1500.0);
    // The third row is measured like the others; with its own defaults (1,000 queued
    // messages, 20 in flight) the broker may drop some, and the row must say so.
    let row = &outcomes[2];
    assert_eq!(number(row, "sent"), 1500.0, "{row}");
    assert_eq!(number(row, "received") + number(row, "lost"), 1500.0, "{row}");
    assert!(number(row, "received") > 0.0, "{row}");
    assert!(number(row, "broker_cpu_s_per_million") > 0.0, "{row}");
    assert!(number(row, "broker_peak_rss_mb") > 1.0, "{row}");

    // It configures itself, so the options that configure the brokers do not apply to it.
    let refused = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["compare", "--tls", "--other", &other])
        .output()
        .expect("loadtest runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--other brokers configure themselves"), "{stderr}");
}
