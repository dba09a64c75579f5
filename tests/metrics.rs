//! Culex's `metrics_listener`: the real broker scraped by the real Prometheus server, its text
//! checked by `promtool`, and the health and readiness endpoints.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, tool, Broker, ConnectOptions, RawClient, TempDir};
use culex::protocol::QoS;

/// One HTTP GET: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: culex\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

#[test]
fn metrics_are_prometheus_text_that_the_real_server_scrapes() {
    let Some(prometheus) = tool("prometheus", "prometheus") else { return };
    let metrics_port = free_port();
    let store = TempDir::new();
    let broker = Broker::start(&format!(
        "metrics_listener {metrics_port}\npersistence true\npersistence_location {}/",
        store.0.display()
    ));
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    // A persistent session: its subscription and message go through the store.
    let options = ConnectOptions { clean_start: false, ..Default::default() };
    let (mut client, _) = RawClient::connect(&broker, "scraped", options);
    client.subscribe("m/#", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect(&broker, "scraper", ConnectOptions::default());
    publisher.publish("m/1", b"x", QoS::AtLeastOnce, false);
    client.receive();
    // Refused: an empty client id with a 3.1.1 persistent session, and protocol level 9.
    let options = ConnectOptions { clean_start: false, ..Default::default() };
    assert!(RawClient::open(&broker).try_handshake("", options).is_some());
    let mut unknown_level = RawClient::open(&broker);
    unknown_level.write_raw(&[0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 1, b'x']);
    assert!(matches!(unknown_level.recv(), Some(culex::protocol::Packet::ConnAck(_))));
    assert_eq!(get(metrics, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(metrics, "/readyz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(metrics, "/nothing").0, "HTTP/1.1 404 Not Found");
    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let total = |name: &str| common::metric_sum(&body, name, "");
    assert_eq!(total("culex_connections_accepted_total"), 3, "{body}"); // and Broker's probe
    assert_eq!(total("culex_publish_received_total"), 1, "{body}");
    let by_qos = |name: &str, qos: &str| common::metric_sum(&body, name, &format!("qos=\"{qos}\""));
    assert_eq!(by_qos("culex_publish_received_total", "1"), 1, "{body}");
    assert_eq!(by_qos("culex_publish_sent_total", "1"), 1, "{body}");
    assert!(body.contains("culex_publish_received_total{shard=\"1\",qos=\"0\"}"), "per shard");
    let refused = |reason: &str| {
        common::metric_sum(&body, "culex_connections_refused_total", &format!("\"{reason}\""))
    };
    assert_eq!(refused("client_id"), 1, "{body}");
    assert_eq!(refused("protocol_version"), 1, "{body}");
    assert!(body.contains("\nprocess_resident_memory_bytes "), "{body}");
    // The store's commits, as histograms: the session, the subscription, the message.
    assert!(total("culex_store_commit_seconds_count") > 0, "{body}");
    assert!(total("culex_store_commit_changes_sum") > 0, "{body}");
    assert!(body.contains("culex_store_commit_seconds_bucket{shard=\"0\",le=\"+Inf\"}"));
    assert!(body.contains("\nculex_mesh_batches_total{shard=\"0\"} "), "{body}");
    common::promtool_accepts(&body);

    // The real server scrapes it, and answers a query through its HTTP API.
    let dir = TempDir::new();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: culex\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let web_port = free_port();
    let mut server = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let api: SocketAddr = ([127, 0, 0, 1], web_port).into();
    let query = "/api/v1/query?query=sum(culex_publish_received_total)";
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answered = TcpStream::connect_timeout(&api, Duration::from_millis(200))
            .is_ok()
            .then(|| get(api, query).1)
            .filter(|body| body.contains("\"value\""));
        if let Some(body) = answered {
            break body;
        }
        assert!(Instant::now() < deadline, "prometheus never had the sample");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(answer.contains("\"1\"]"), "{answer}");
}

/// One request per connection, two seconds to send it: a client that connects and says nothing
/// delays the next scrape by at most that, and never stops the endpoint.
#[test]
fn a_silent_client_delays_the_next_scrape_by_at_most_two_seconds() {
    let metrics_port = free_port();
    let _broker = Broker::start(&format!("metrics_listener {metrics_port}"));
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let _silent = TcpStream::connect(metrics).unwrap();
    let started = Instant::now();
    assert_eq!(get(metrics, "/healthz").0, "HTTP/1.1 200 OK");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}
