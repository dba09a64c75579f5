//! Mosquitto's own configuration files, as Debian's mosquitto package installs them, read by
//! the real `culex` binary.

mod common;

use std::path::Path;
use std::process::Command;

/// The fully commented example config: every option it documents is one Culex recognises.
#[test]
fn every_option_of_the_mosquitto_example_config_is_recognised() {
    let example = Path::new("/usr/share/doc/mosquitto/examples/mosquitto.conf");
    if common::mosquitto_tool("mosquitto").is_none() {
        return;
    }
    let text = std::fs::read_to_string(example).expect("the mosquitto package ships the example");
    let options: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter_map(|rest| rest.split_whitespace().next().filter(|_| !rest.starts_with(' ')))
        .filter(|word| {
            word.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit() || c == '.')
        })
        .filter(|word| word.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .collect();
    assert!(options.len() > 80, "expected the documented options, found {}", options.len());
    let unknown: Vec<&&str> =
        options.iter().filter(|o| !culex::config::is_known_option(o)).collect();
    assert!(unknown.is_empty(), "options culex does not recognise: {unknown:?}");
}

/// Debian's /etc/mosquitto/mosquitto.conf (pid_file, persistence, log_dest, include_dir) parses:
/// what is not applied yet is a warning, and the broker would start, with its store where
/// Mosquitto keeps its own (under another name).
#[test]
fn debians_default_config_passes_test_config() {
    let config = Path::new("/etc/mosquitto/mosquitto.conf");
    if common::mosquitto_tool("mosquitto").is_none() {
        return;
    }
    assert!(config.exists(), "the mosquitto package installs {}", config.display());
    let out = test_config(config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let store = "persistence /var/lib/mosquitto/mosquitto.db.shardN";
    assert!(stdout.contains(store), "{stdout}");
    assert!(stdout.contains("configuration OK: listeners 127.0.0.1:1883, [::1]:1883"), "{stdout}");
}

#[test]
fn test_config_reports_errors_with_file_and_line() {
    let dir = common::TempDir::new();
    let conf = dir.0.join("bad.conf");
    std::fs::write(&conf, "listener 1883\ntopic a/# out\n").unwrap();
    let out = test_config(&conf);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: invalid value for `topic`: invalid bridge configuration",
            conf.display()
        )),
        "{stderr}"
    );
}

/// A TLS listener missing its certificate, a bridge asking for TLS without a CA, and one whose
/// CA file is missing: the real broker refuses to start (naming file and line, or the file it
/// cannot read) rather than open the listener or dial the peer in plaintext, and nothing
/// answers on the listener's port.
#[test]
fn tls_options_stop_the_broker_instead_of_serving_plaintext() {
    let dir = common::TempDir::new();
    let port = common::free_port();
    for (text, line, option, says) in [
        (
            format!(
                "listener {port} 127.0.0.1\ncafile /etc/mosquitto/ca_certificates/ca.crt\n\
                 require_certificate true\n"
            ),
            2,
            "cafile",
            "asks for TLS on listener",
        ),
        (
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nconnection site2\n\
                 address 127.0.0.1:1\ntopic room1/# both 2 sensor/ myhouse/\n\
                 remote_password secret\nbridge_insecure true\n"
            ),
            3,
            "connection",
            "connection `site2` asks for TLS without bridge_cafile, bridge_capath",
        ),
        (
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nconnection site2\n\
                 address 127.0.0.1:1\ntopic room1/# both 2 sensor/ myhouse/\n\
                 remote_password secret\nbridge_cafile /nonexistent/ca.crt\n"
            ),
            0,
            "",
            "connection site2: /nonexistent/ca.crt: cannot read",
        ),
    ] {
        let conf = dir.0.join("tls.conf");
        std::fs::write(&conf, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_culex"))
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "culex started with `{option}`: {}",
                common::answers_mqtt(([127, 0, 0, 1], port).into())
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{stderr}");
        assert!(
            match line {
                0 => stderr.contains(says),
                _ =>
                    stderr.contains(&format!("{}:{line}: ", conf.display()))
                        && stderr.contains(&format!("`{option}`"))
                        && stderr.contains(says),
            },
            "{stderr}"
        );
        assert!(!common::answers_mqtt(([127, 0, 0, 1], port).into()));
    }
}

/// The tutorial's master configuration, as written there, checks out with both bridges.
#[test]
fn the_tutorials_master_config_passes_test_config() {
    let dir = common::TempDir::new();
    let conf = dir.0.join("master.conf");
    let block = |name: &str, leaf: &str| {
        format!(
            "connection {name}\naddress {leaf}:1883\ntopic room1/# both 2 sensor/ myhouse/\n\
             bridge_protocol_version mqttv311\nnotifications true\ncleansession true\n\
             try_private true\nstart_type automatic\n"
        )
    };
    let text = block("mytest", "127.0.0.88") + &block("mytest2", "127.0.0.89");
    std::fs::write(&conf, text).unwrap();
    let out = test_config(&conf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains(
            "bridges: mytest -> 127.0.0.88:1883 (1 topics), mytest2 -> 127.0.0.89:1883 (1 topics)"
        ),
        "{stdout}"
    );
}

/// `culex -c FILE --test-config`.
fn test_config(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_culex"))
        .arg("-c")
        .arg(file)
        .arg("--test-config")
        .output()
        .unwrap()
}
