//! TLS for the load generator: the certificates a comparison serves from both brokers (made
//! with `openssl`, as an operator makes them) and the client side that trusts them. Every
//! connection makes a full handshake (session resumption is off), so each costs the broker
//! what a new device costs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{ensure, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The server key a comparison's certificate has: handshake cost depends mostly on it.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum KeyKind {
    /// ECDSA P-256.
    Ecdsa,
    /// RSA 2048.
    Rsa,
}

/// The TLS versions a client offers.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Version {
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

/// A CA and a server certificate it signed, for 127.0.0.1 (and the bridged run's addresses),
/// in a directory removed with it.
pub struct Certificates {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificates {
    pub fn generate(kind: KeyKind) -> anyhow::Result<Certificates> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let key_args: &[&str] = match kind {
            KeyKind::Ecdsa => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa => &["-newkey", "rsa:2048"],
        };
        let ca_args = ["req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=loadtest CA"];
        openssl(
            &[&ca_args[..], key_args, &["-keyout", "ca.key", "-out", "ca.crt"]].concat(),
            dir.path(),
        )?;
        let csr_args = ["req", "-new", "-nodes", "-subj", "/CN=localhost"];
        openssl(
            &[&csr_args[..], key_args, &["-keyout", "server.key", "-out", "server.csr"]].concat(),
            dir.path(),
        )?;
        std::fs::write(
            path("server.ext"),
            "subjectAltName = IP:127.0.0.1, IP:127.0.0.53, IP:127.0.0.88, DNS:localhost\n",
        )?;
        openssl(
            &[
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
            ],
            dir.path(),
        )?;
        // Mosquitto started as root reads its files as the `mosquitto` user: a throwaway key
        // is made readable to everyone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(path("server.key"), std::fs::Permissions::from_mode(0o644))?;
        Ok(Certificates {
            ca: path("ca.crt"),
            cert: path("server.crt"),
            key: path("server.key"),
            _dir: dir,
        })
    }

    /// The listener lines both brokers read.
    pub fn listener_lines(&self) -> String {
        format!("certfile {}\nkeyfile {}\n", self.cert.display(), self.key.display())
    }
}

fn openssl(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A client that trusts `cafile` and offers `version` (both when absent), without resumption.
pub fn client_config(cafile: &Path, version: Option<Version>) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(cafile)
        .with_context(|| format!("reading {}", cafile.display()))?
    {
        roots.add(certificate.with_context(|| format!("reading {}", cafile.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        None => rustls::DEFAULT_VERSIONS,
        Some(Version::Tls12) => &[&rustls::version::TLS12],
        Some(Version::Tls13) => &[&rustls::version::TLS13],
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A TLS session over `stream` to `addr`; the handshake happens with the first write.
pub fn wrap(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    stream: std::net::TcpStream,
) -> anyhow::Result<StreamOwned<ClientConnection, std::net::TcpStream>> {
    let connection =
        ClientConnection::new(config.clone(), ServerName::IpAddress(addr.ip().into()))?;
    Ok(StreamOwned::new(connection, stream))
}
