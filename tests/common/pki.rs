//! Certificates made at test time with the `openssl` command, as an operator makes them: a CA,
//! server certificates for loopback (and the bridge tests' aliases) and localhost, client
//! certificates, revocation lists. Keys are readable by everyone: Mosquitto started as root reads
//! them as the `mosquitto` user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate authority in its own directory, with an `openssl ca` database so that it can
/// revoke and publish CRLs.
pub struct Ca {
    pub dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
    name: String,
}

/// A certificate and its private key.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The key types a test may ask for.
#[derive(Clone, Copy)]
pub enum KeyType {
    EcP256,
    Rsa2048,
}

impl KeyType {
    fn args(self) -> &'static [&'static str] {
        match self {
            KeyType::EcP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyType::Rsa2048 => &["-newkey", "rsa:2048"],
        }
    }
}

pub fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Ca {
    /// A new CA named `name` under `parent/name`.
    pub fn new(parent: &Path, name: &str) -> Ca {
        let dir = parent.join(name);
        std::fs::create_dir_all(dir.join("issued")).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndir = .\ndatabase = index.txt\n\
             new_certs_dir = issued\nserial = serial\ncrlnumber = crlnumber\n\
             default_md = sha256\ndefault_crl_days = 2\npolicy = any\n\
             copy_extensions = copy\nunique_subject = no\n\
             [any]\ncommonName = supplied\norganizationName = optional\n",
        )
        .unwrap();
        let subject = format!("/O=Culex tests/CN={name}");
        let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subject];
        args.extend(KeyType::EcP256.args());
        args.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(&args, &dir);
        for path in [parent, &dir] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Ca { cert: dir.join("ca.crt"), key: dir.join("ca.key"), dir, name: name.to_string() }
    }

    /// A server certificate for 127.0.0.1, ::1, the bridge tests' 127.0.0.53, .88 and .89, and
    /// localhost.
    pub fn server(&self, file: &str, key_type: KeyType) -> Issued {
        let names =
            "IP:127.0.0.1, IP:::1, IP:127.0.0.53, IP:127.0.0.88, IP:127.0.0.89, DNS:localhost";
        self.server_for(file, key_type, names)
    }

    /// A server certificate for these subject alternative names only.
    pub fn server_for(&self, file: &str, key_type: KeyType, names: &str) -> Issued {
        let extensions = format!("subjectAltName = {names}\nextendedKeyUsage = serverAuth\n");
        self.issue(file, "/CN=localhost", key_type, &extensions, None)
    }

    /// A client certificate with this subject (`/O=.../CN=...`).
    pub fn client(&self, file: &str, subject: &str) -> Issued {
        self.issue(file, subject, KeyType::EcP256, "extendedKeyUsage = clientAuth\n", None)
    }

    /// A server certificate whose validity ended in 2021.
    pub fn expired_server(&self, file: &str) -> Issued {
        let dates = ("20200101000000Z", "20210101000000Z");
        self.issue(
            file,
            "/CN=localhost",
            KeyType::EcP256,
            "subjectAltName = IP:127.0.0.1\n",
            Some(dates),
        )
    }

    fn issue(
        &self,
        file: &str,
        subject: &str,
        key_type: KeyType,
        extensions: &str,
        dates: Option<(&str, &str)>,
    ) -> Issued {
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let cert = self.dir.join(format!("{file}.crt"));
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(&ext, format!("basicConstraints = CA:FALSE\n{extensions}")).unwrap();
        let (key_s, csr_s, cert_s, ext_s) = (
            key.to_str().unwrap(),
            csr.to_str().unwrap(),
            cert.to_str().unwrap(),
            ext.to_str().unwrap(),
        );
        let mut args =
            vec!["req", "-new", "-nodes", "-subj", subject, "-keyout", key_s, "-out", csr_s];
        args.extend(key_type.args());
        openssl(&args, &self.dir);
        let mut args = vec![
            "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key", "-in",
            csr_s, "-out", cert_s, "-extfile", ext_s, "-notext",
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "2"]),
        }
        openssl(&args, &self.dir);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        Issued { cert, key }
    }

    /// Revokes `issued` and writes the CA's CRL to `crl.pem`, returning its path.
    pub fn revoke(&self, issued: &Issued) -> PathBuf {
        let cert = issued.cert.to_str().unwrap();
        openssl(
            &[
                "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
                "-revoke", cert,
            ],
            &self.dir,
        );
        self.crl()
    }

    /// The CA's current CRL, in `crl.pem`.
    pub fn crl(&self) -> PathBuf {
        openssl(
            &[
                "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
                "-gencrl", "-out", "crl.pem",
            ],
            &self.dir,
        );
        self.dir.join("crl.pem")
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A certificate's subject as OpenSSL prints it in RFC 2253 form.
pub fn subject_rfc2253(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(cert)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().trim_start_matches("subject=").to_string()
}

/// Whether the `openssl` command is here. Missing: a loud skip locally, a failure under CI.
pub fn available() -> bool {
    super::tool("openssl", "openssl").is_some()
}
