//! paho-mqtt (Python), a third-party client, against the real `culex` binary: runs the unittest
//! suites in tests/paho/ with the broker's port in CULEX_PORT.

mod common;

use std::process::Command;

use common::{paho_available, Broker};

/// Runs `script` against a broker started with `config`.
fn run_suite(script: &str, config: &str) {
    if !paho_available() {
        return;
    }
    let broker = Broker::start(config);
    let output = Command::new("python3")
        .arg(format!("{}/tests/paho/{script}", env!("CARGO_MANIFEST_DIR")))
        .env("CULEX_PORT", broker.port.to_string())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(output.status.success(), "paho suite {script} failed:\n{report}");
}

#[test]
fn paho_mqtt_v311_suite() {
    run_suite("test_v311.py", "");
}

#[test]
fn paho_mqtt_v5_suite() {
    // The suite reads the Reason Strings paho hands the application: they are Culex's option.
    run_suite("test_v5.py", "reason_strings true");
}
