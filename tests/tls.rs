//! TLS listeners against unmodified `mosquitto_pub` and `mosquitto_sub`, with certificates made
//! by `openssl` at test time: server authentication, client certificates required, revoked and
//! from another CA, certificate names as user names driving the ACL file, certificate rotation
//! by SIGHUP with clients connected, and every bad file a start-up error that names it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pki::{self, Ca, Issued, KeyType};
use common::{free_port, mosquitto_sub, mosquitto_tools, Broker, MosquittoTools, TempDir};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A TLS listener on a free port, beside the plain one the harness starts with.
fn tls_listener(port: u16, server: &Issued, extra: &str) -> String {
    format!(
        "listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n{extra}\n",
        path(&server.cert),
        path(&server.key)
    )
}

fn publish(tools: &MosquittoTools, port: u16, args: &[&str]) -> Output {
    Command::new(&tools.publish)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn finish(child: Child) -> (bool, String) {
    let Output { status, stdout, .. } = child.wait_with_output().unwrap();
    (status.success(), String::from_utf8(stdout).unwrap())
}

#[test]
fn mosquitto_tools_publish_and_subscribe_over_tls() {
    let Some(tools) = mosquitto_tools().filter(|_| pki::available()) else { return };
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let other = Ca::new(&dir.0, "other");
    for key_type in [KeyType::EcP256, KeyType::Rsa2048] {
        let server = ca.server("server", key_type);
        let port = free_port();
        let broker = Broker::start(&tls_listener(port, &server, ""));
        let cafile = ["--cafile", path(&ca.cert)];
        let sub = mosquitto_sub(
            &tools,
            &broker,
            port,
            "sub",
            &[&cafile[..], &["-t", "t", "-C", "1"]].concat(),
        );
        let out = publish(&tools, port, &[&cafile[..], &["-t", "t", "-m", "hello"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(finish(sub), (true, "hello\n".to_string()));
        // A client that trusts another CA refuses the broker's certificate.
        let out = publish(&tools, port, &["--cafile", path(&other.cert), "-t", "t", "-m", "x"]);
        assert!(!out.status.success(), "a client trusting another CA connected");
        // `--insecure` skips the host name check only: a certificate for another name passes.
        let out = Command::new(&tools.publish)
            .args(["-h", "localhost", "-p", &port.to_string(), "--cafile", path(&ca.cert)])
            .args(["--insecure", "-t", "t", "-m", "x"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // A plaintext client on the TLS port never gets MQTT, and the plain port still serves.
        assert!(!common::answers_mqtt(([127, 0, 0, 1], port).into()));
        assert!(common::answers_mqtt(broker.addr()));
    }
}

#[test]
fn a_required_client_certificate_must_come_from_the_ca_and_not_be_revoked() {
    let Some(tools) = mosquitto_tools().filter(|_| pki::available()) else { return };
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let other = Ca::new(&dir.0, "other");
    let server = ca.server("server", KeyType::EcP256);
    let good = ca.client("good", "/CN=good");
    let revoked = ca.client("revoked", "/CN=revoked");
    let stranger = other.client("stranger", "/CN=stranger");
    let crl = ca.revoke(&revoked);
    let (port, metrics_port) = (free_port(), free_port());
    let extra = format!(
        "cafile {}\nrequire_certificate true\ncrlfile {}\nmetrics_listener {metrics_port}\n",
        path(&ca.cert),
        path(&crl)
    );
    let broker = Broker::start(&tls_listener(port, &server, &extra));
    let with = |client: Option<&Issued>| {
        let mut args = vec!["--cafile", path(&ca.cert), "-t", "t", "-m", "x"];
        if let Some(client) = client {
            args.extend(["--cert", path(&client.cert), "--key", path(&client.key)]);
        }
        publish(&tools, port, &args).status.success()
    };
    assert!(with(Some(&good)), "a certificate from the CA is let in");
    assert!(!with(None), "no certificate, no connection");
    assert!(!with(Some(&revoked)), "a revoked certificate is refused");
    assert!(!with(Some(&stranger)), "a certificate from another CA is refused");
    assert!(broker.log_text().contains("TLS handshake failed"), "{}", broker.log_text());
    // Prometheus counts them, summed over shards.
    let metrics = common::scrape_metrics(metrics_port);
    assert_eq!(common::metric_sum(&metrics, "culex_tls_handshakes_total", ""), 1, "{metrics}");
    let failures = common::metric_sum(&metrics, "culex_tls_handshake_failures_total", "");
    assert_eq!(failures, 3, "{metrics}");
}

#[test]
fn certificate_names_are_user_names_and_the_acl_file_applies_to_them() {
    let Some(tools) = mosquitto_tools().filter(|_| pki::available()) else { return };
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let server = ca.server("server", KeyType::EcP256);
    let alice = ca.client("alice", "/O=Culex tests/CN=alice");
    let acl = dir.0.join("acl");
    // The identity (CN) on one listener, the whole subject on another, written as OpenSSL
    // prints it (which Mosquitto uses).
    let subject = pki::subject_rfc2253(&alice.cert);
    std::fs::write(
        &acl,
        format!(
            "user alice\ntopic readwrite alice/#\n\nuser {subject}\ntopic readwrite subject/#\n"
        ),
    )
    .unwrap();
    let (by_cn, by_subject) = (free_port(), free_port());
    let tls = format!("cafile {}\nrequire_certificate true\n", path(&ca.cert));
    let config = format!(
        "acl_file {}\n{}use_identity_as_username true\n{}use_subject_as_username true\n",
        path(&acl),
        tls_listener(by_cn, &server, &tls),
        tls_listener(by_subject, &server, &tls),
    );
    let broker = Broker::start(&config);
    let client =
        ["--cafile", path(&ca.cert), "--cert", path(&alice.cert), "--key", path(&alice.key)];
    for (port, allowed, denied) in
        [(by_cn, "alice/x", "subject/x"), (by_subject, "subject/x", "alice/x")]
    {
        let sub = mosquitto_sub(
            &tools,
            &broker,
            port,
            "watch",
            &[&client[..], &["-t", "#", "-C", "1"]].concat(),
        );
        // A user name and password sent in CONNECT are replaced by the certificate's name.
        for topic in [denied, allowed] {
            let args =
                [&client[..], &["-u", "mallory", "-P", "x", "-t", topic, "-m", topic]].concat();
            let out = publish(&tools, port, &args);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(
            finish(sub),
            (true, format!("{allowed}\n")),
            "only {allowed}: {}",
            broker.log_text()
        );
    }
}

#[test]
fn sighup_rotates_the_certificate_for_new_clients_and_keeps_connected_ones() {
    let Some(tools) = mosquitto_tools().filter(|_| pki::available()) else { return };
    let dir = TempDir::new();
    let old_ca = Ca::new(&dir.0, "old");
    let new_ca = Ca::new(&dir.0, "new");
    let old = old_ca.server("server", KeyType::EcP256);
    let new = new_ca.server("server", KeyType::EcP256);
    let (cert, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
    let install = |issued: &Issued| {
        std::fs::copy(&issued.cert, &cert).unwrap();
        std::fs::copy(&issued.key, &key).unwrap();
    };
    install(&old);
    let port = free_port();
    let broker =
        Broker::start(&tls_listener(port, &Issued { cert: cert.clone(), key: key.clone() }, ""));
    let trusting = |ca: &Ca| vec!["--cafile".to_string(), path(&ca.cert).to_string()];
    let connects = |ca: &Ca| {
        let args = [trusting(ca), ["-t", "t", "-m", "probe"].map(String::from).to_vec()].concat();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        publish(&tools, port, &args).status.success()
    };
    let args = ["--cafile", path(&old_ca.cert), "-t", "rotated", "-C", "1"];
    let sub = mosquitto_sub(&tools, &broker, port, "stays", &args);
    install(&new);
    signal(&broker, libc::SIGHUP);
    wait_for(&broker, "TLS files reloaded");
    assert!(connects(&new_ca), "new clients get the new certificate");
    assert!(!connects(&old_ca), "the old certificate is no longer served");
    // A broken file keeps the certificate in force, and says why.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    signal(&broker, libc::SIGHUP);
    wait_for(&broker, "keep the certificate in force");
    assert!(connects(&new_ca), "the last good certificate stays in force");
    // The subscriber connected before the rotation is still connected and served.
    let out =
        publish(&tools, port, &["--cafile", path(&new_ca.cert), "-t", "rotated", "-m", "after"]);
    assert!(out.status.success());
    assert_eq!(finish(sub), (true, "after\n".to_string()));
}

fn signal(broker: &Broker, signal: i32) {
    // SAFETY: kill(2) on the broker child this test started.
    assert_eq!(unsafe { libc::kill(broker.pid() as i32, signal) }, 0);
}

fn wait_for(broker: &Broker, line: &str) {
    let deadline = Instant::now() + common::WAIT;
    while !broker.log_text().contains(line) {
        assert!(Instant::now() < deadline, "no `{line}` in the log: {}", broker.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each file a TLS listener cannot use stops the start, and the error names the file.
#[test]
fn bad_tls_files_stop_the_start_and_name_the_file() {
    if !pki::available() {
        return;
    }
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let server = ca.server("server", KeyType::EcP256);
    let other = ca.server("other", KeyType::EcP256);
    let expired = ca.expired_server("expired");
    let encrypted = dir.0.join("encrypted.key");
    pki::openssl(
        &[
            "pkey",
            "-in",
            path(&server.key),
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            path(&encrypted),
        ],
        &dir.0,
    );
    let missing = dir.0.join("missing.crt");
    let cases = [
        (
            server.cert.clone(),
            other.key.clone(),
            other.key.clone(),
            "does not match the certificate",
        ),
        (server.cert.clone(), encrypted.clone(), encrypted.clone(), "is encrypted"),
        (missing.clone(), server.key.clone(), missing.clone(), "cannot read"),
        (expired.cert.clone(), expired.key.clone(), expired.cert.clone(), "expired on"),
        (server.key.clone(), server.key.clone(), server.key.clone(), "holds no PEM certificate"),
    ];
    for (cert, key, named, says) in cases {
        let conf = dir.0.join("tls.conf");
        let port = free_port();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                path(&cert),
                path(&key)
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_culex"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {}", named.display());
        let expected = format!("{}: ", named.display());
        assert!(stderr.contains(&expected) && stderr.contains(says), "{says}: {stderr}");
    }
}

/// `tls_version` is the lowest version allowed and `ciphers` limits TLS 1.2 to the suites named,
/// as `openssl s_client` forced to one version and one suite sees them.
#[test]
fn tls_version_and_ciphers_limit_what_is_negotiated() {
    if !pki::available() {
        return;
    }
    let dir = TempDir::new();
    let ca = Ca::new(&dir.0, "ca");
    let server = ca.server("server", KeyType::EcP256);
    let (default, only13, aes256) = (free_port(), free_port(), free_port());
    let config = [
        tls_listener(default, &server, ""),
        tls_listener(only13, &server, "tls_version tlsv1.3\n"),
        tls_listener(aes256, &server, "ciphers ECDHE-ECDSA-AES256-GCM-SHA384\n"),
    ]
    .concat();
    let _broker = Broker::start(&config);
    let handshakes = |port: u16, args: &[&str]| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile", path(&ca.cert)])
            .args(["-verify_return_error", "-brief"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        out.status.success() && stderr.contains("CONNECTION ESTABLISHED")
    };
    assert!(handshakes(default, &["-tls1_2"]));
    assert!(handshakes(default, &["-tls1_3"]));
    assert!(!handshakes(only13, &["-tls1_2"]));
    assert!(handshakes(only13, &["-tls1_3"]));
    assert!(handshakes(aes256, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]));
    assert!(!handshakes(aes256, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]));
}
