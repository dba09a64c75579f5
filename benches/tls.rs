//! The crypto provider choice, measured: one full TLS handshake (client and server in this
//! process, over memory, no resumption) with *ring* and with aws-lc-rs, for ECDSA P-256 and
//! RSA 2048 server certificates, TLS 1.2 and 1.3. Certificates are made with `openssl`.
//! Run: `cargo bench --bench tls`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// A CA and a server certificate for 127.0.0.1 with a key of this kind, in `dir`.
fn certificates(
    dir: &Path,
    kind: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, RootCertStore) {
    let key: &[&str] = match kind {
        "ecdsa" => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        _ => &["-newkey", "rsa:2048"],
    };
    let run = |args: &[&str]| {
        let ok = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    };
    let ca = ["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=bench CA"];
    run(&[&ca[..], key, &["-keyout", "ca.key", "-out", "ca.crt"]].concat());
    let csr = ["req", "-new", "-nodes", "-subj", "/CN=localhost"];
    run(&[&csr[..], key, &["-keyout", "server.key", "-out", "server.csr"]].concat());
    std::fs::write(dir.join("server.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    let read = |name: &str| -> PathBuf { dir.join(name) };
    let chain =
        CertificateDer::pem_file_iter(read("server.crt")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(read("server.key")).unwrap();
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(read("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    (chain, key, roots)
}

/// Moves every TLS record one side has to write into the other.
fn pass(from: &mut rustls::Connection, to: &mut rustls::Connection, wire: &mut Vec<u8>) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).unwrap();
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
    }
    to.process_new_packets().unwrap();
}

fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>, wire: &mut Vec<u8>) {
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut client = rustls::Connection::from(ClientConnection::new(client.clone(), name).unwrap());
    let mut server = rustls::Connection::from(ServerConnection::new(server.clone()).unwrap());
    while client.is_handshaking() || server.is_handshaking() {
        pass(&mut client, &mut server, wire);
        pass(&mut server, &mut client, wire);
    }
}

fn handshakes(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("culex-bench-tls-{}", std::process::id()));
    let mut group = c.benchmark_group("tls_handshake");
    for kind in ["ecdsa", "rsa"] {
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key, roots) = certificates(&dir, kind);
        let providers = [
            ("ring", rustls::crypto::ring::default_provider()),
            ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider()),
        ];
        for (name, provider) in providers {
            let provider: Arc<CryptoProvider> = Arc::new(provider);
            for (label, version) in
                [("1.2", &rustls::version::TLS12), ("1.3", &rustls::version::TLS13)]
            {
                let server = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key.clone_key())
                    .unwrap();
                let mut client = ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[version])
                    .unwrap()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                client.resumption = rustls::client::Resumption::disabled();
                let (client, server) = (Arc::new(client), Arc::new(server));
                let mut wire = Vec::new();
                let id = BenchmarkId::new(format!("{name}/{kind}"), format!("TLS {label}"));
                group.bench_function(id, |b| b.iter(|| handshake(&client, &server, &mut wire)));
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
