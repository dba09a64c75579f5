//! TLS as mosquitto.conf asks for it: a listener's certificate options turned into a rustls
//! server configuration, its client certificates' names, and OpenSSL's cipher names mapped to
//! rustls suites. Reads files; never opens sockets. Every error names the file it is about.
//!
//! The crypto provider is *ring*: it builds with a C compiler alone (aws-lc-rs needs cmake
//! and adds minutes to a clean build), and the handshake rates it gives are measured in
//! docs/ARCHITECTURE.md ("TLS").

mod names;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedProtocolVersion};

pub use names::{common_name, subject_rfc2253};

/// A listener's certificate-based TLS options (mosquitto.conf(5), "Certificate based SSL/TLS
/// Support"), checked for consistency but not yet read from disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerTls {
    /// `certfile`: the server's certificate, followed by its chain.
    pub certfile: Option<PathBuf>,
    /// `keyfile`: the server's private key (PKCS#1, PKCS#8 or SEC1, PEM, unencrypted).
    pub keyfile: Option<PathBuf>,
    /// `cafile` and `capath`: the CAs trusted to have issued client certificates.
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    /// `crlfile`: client certificates revoked (checked on the client's own certificate, as
    /// OpenSSL's CRL_CHECK does, and a client whose issuer has no CRL in it is refused).
    pub crlfile: Option<PathBuf>,
    /// `require_certificate`: clients must present a certificate from a trusted CA.
    pub require_certificate: bool,
    /// `use_identity_as_username` / `use_subject_as_username`.
    pub username_from_certificate: Option<CertificateName>,
    /// `tls_version`: the lowest version allowed (Mosquitto's default: TLS 1.2).
    pub min_version: TlsVersion,
    /// `ciphers` (TLS 1.2) and `ciphers_tls1.3`: `None` keeps every suite rustls offers.
    pub ciphers_tls12: Option<Vec<CipherSuite>>,
    pub ciphers_tls13: Option<Vec<CipherSuite>>,
}

/// Which name of a client certificate becomes the client's user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateName {
    /// `use_identity_as_username`: the subject's Common Name.
    CommonName,
    /// `use_subject_as_username`: the whole subject, as OpenSSL prints it in RFC 2253 form.
    Subject,
}

impl CertificateName {
    /// The name `certificate` (DER) gives, if it has one that is valid UTF-8.
    pub fn of(self, certificate: &[u8]) -> Option<String> {
        match self {
            CertificateName::CommonName => common_name(certificate),
            CertificateName::Subject => subject_rfc2253(certificate),
        }
    }
}

/// `tls_version` and `bridge_tls_version`: the lowest version allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Mosquitto's names. rustls has no TLS 1.1, so `tlsv1.1` is refused, not quietly raised.
    pub fn parse(value: &str) -> Result<TlsVersion, String> {
        match value {
            "tlsv1.2" => Ok(TlsVersion::Tls12),
            "tlsv1.3" => Ok(TlsVersion::Tls13),
            "tlsv1.1" | "tlsv1" => Err(format!(
                "`{value}` is not supported: Culex's TLS (rustls) speaks TLS 1.2 and 1.3 only \
                 (write `tlsv1.2`)"
            )),
            _ => Err("expected `tlsv1.2` or `tlsv1.3`".into()),
        }
    }

    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static FROM_TLS12: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static FROM_TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::Tls12 => &FROM_TLS12,
            TlsVersion::Tls13 => &FROM_TLS13,
        }
    }
}

/// A TLS file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct TlsError {
    pub file: PathBuf,
    pub reason: String,
}

fn error(file: &Path, reason: impl Into<String>) -> TlsError {
    TlsError { file: file.to_path_buf(), reason: reason.into() }
}

/// OpenSSL's names for the suites rustls implements. TLS 1.2 ones are ECDHE with AEADs only:
/// rustls has no CBC, no plain RSA key exchange and no DHE.
const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    ("ECDHE-ECDSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("ECDHE-RSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-RSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-RSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
];

const TLS13_SUITES: &[(&str, CipherSuite)] = &[
    ("TLS_AES_128_GCM_SHA256", CipherSuite::TLS13_AES_128_GCM_SHA256),
    ("TLS_AES_256_GCM_SHA384", CipherSuite::TLS13_AES_256_GCM_SHA384),
    ("TLS_CHACHA20_POLY1305_SHA256", CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
];

/// OpenSSL keywords that name groups of suites, as the subset rustls has of each.
fn tls12_keyword(word: &str) -> Option<Vec<CipherSuite>> {
    let part = match word {
        "DEFAULT" | "ALL" | "HIGH" | "ECDHE" | "EECDH" | "kECDHE" | "kEECDH" | "AEAD" => "",
        "AESGCM" => "GCM",
        "AES128" => "AES128",
        "AES256" => "AES256",
        "CHACHA20" => "CHACHA20",
        "aECDSA" | "ECDSA" => "-ECDSA-",
        "aRSA" | "RSA" => "-RSA-",
        _ => return None,
    };
    Some(TLS12_SUITES.iter().filter(|(name, _)| name.contains(part)).map(|(_, s)| *s).collect())
}

/// A `ciphers` (TLS 1.2, `tls13` false) or `ciphers_tls1.3` list: names separated by colons
/// (or, as OpenSSL also takes, spaces and commas). A name excluded (`!NAME`, `-NAME`) that
/// rustls never offers is let pass, since excluding it changes nothing; a name asked for that
/// rustls cannot offer is an error, never left out in silence. OpenSSL's ordering directives
/// (`+NAME`, `@STRENGTH`, `@SECLEVEL=n`) do not change what is allowed and are let pass.
pub fn parse_ciphers(list: &str, tls13: bool) -> Result<Vec<CipherSuite>, String> {
    let table = if tls13 { TLS13_SUITES } else { TLS12_SUITES };
    let supported = || table.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(":");
    let mut allowed: Vec<CipherSuite> = Vec::new();
    let mut excluded: Vec<CipherSuite> = Vec::new();
    for word in list.split([':', ' ', ',']).filter(|w| !w.is_empty()) {
        if word.starts_with('@') || word.starts_with('+') {
            continue;
        }
        let (exclude, name) = match word.strip_prefix(['!', '-']) {
            Some(name) => (true, name),
            None => (false, word),
        };
        let named = table.iter().find(|(n, _)| *n == name).map(|(_, suite)| vec![*suite]);
        let suites = match named.or_else(|| (!tls13).then(|| tls12_keyword(name)).flatten()) {
            Some(suites) => suites,
            None if exclude => continue,
            None => {
                return Err(format!(
                    "cipher `{name}` has no equivalent in Culex's TLS (rustls); it offers: {}",
                    supported()
                ))
            }
        };
        if exclude {
            excluded.extend(suites);
        } else {
            for suite in suites {
                if !allowed.contains(&suite) {
                    allowed.push(suite);
                }
            }
        }
    }
    allowed.retain(|suite| !excluded.contains(suite));
    if allowed.is_empty() {
        return Err(format!(
            "no cipher left to offer; Culex's TLS (rustls) offers: {}",
            supported()
        ));
    }
    Ok(allowed)
}

/// The crypto provider, with only the suites these lists allow.
fn provider(tls12: Option<&[CipherSuite]>, tls13: Option<&[CipherSuite]>) -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| {
        let allowed = match suite {
            rustls::SupportedCipherSuite::Tls12(_) => tls12,
            rustls::SupportedCipherSuite::Tls13(_) => tls13,
        };
        allowed.is_none_or(|list| list.contains(&suite.suite()))
    });
    provider
}

/// Every certificate in a PEM file, in order.
fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(file)?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(file, format!("not a PEM certificate file: {e}")))?;
    if certificates.is_empty() {
        return Err(error(file, "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"));
    }
    Ok(certificates)
}

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| error(file, format!("cannot read: {e}")))
}

fn private_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(file)?;
    if text.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(error(
            file,
            "the private key is encrypted, and a broker has nobody to ask for its passphrase: \
             decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep the file readable by the \
             broker only",
        ));
    }
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| error(file, format!("holds no usable PEM private key: {e}")))
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The CAs of `cafile` and every certificate file in `capath`.
fn roots(cafile: Option<&Path>, capath: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut add = |file: &Path, certificates: Vec<CertificateDer<'static>>| {
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|e| error(file, format!("not a usable CA certificate: {e}")))?;
        }
        Ok::<(), TlsError>(())
    };
    if let Some(file) = cafile {
        add(file, certificates(file)?)?;
    }
    if let Some(dir) = capath {
        let entries =
            std::fs::read_dir(dir).map_err(|e| error(dir, format!("cannot read: {e}")))?;
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        // OpenSSL's hashed links and the files they point to hold the same certificates; any
        // file that is not PEM (a README) is skipped, as OpenSSL's lookup would never read it.
        for file in files.iter().filter(|f| f.is_file()) {
            if let Ok(found) = certificates(file) {
                add(file, found)?;
            }
        }
    }
    Ok(roots)
}

/// Builds the rustls configuration a listener's options describe, reading every file now:
/// a file that cannot be read or used, a key that does not match its certificate, an expired
/// certificate, each is an error naming the file.
pub fn server_config(settings: &ListenerTls) -> Result<ServerConfig, TlsError> {
    let (Some(certfile), Some(keyfile)) = (&settings.certfile, &settings.keyfile) else {
        // Checked when the configuration is read; kept here so no path can serve without them.
        return Err(error(Path::new("certfile"), "a TLS listener needs certfile and keyfile"));
    };
    let chain = certificates(certfile)?;
    let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
    let validity =
        names::validity(leaf).ok_or_else(|| error(certfile, "not an X.509 certificate"))?;
    if validity.not_after < now() {
        return Err(error(
            certfile,
            format!("the server certificate expired on {}", validity.not_after_text),
        ));
    }
    let key = private_key(keyfile)?;
    let provider =
        Arc::new(provider(settings.ciphers_tls12.as_deref(), settings.ciphers_tls13.as_deref()));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(settings.min_version.versions())
        .map_err(|e| error(certfile, format!("no cipher suite for the versions allowed: {e}")))?;
    let builder = if settings.require_certificate {
        let roots = Arc::new(roots(settings.cafile.as_deref(), settings.capath.as_deref())?);
        let ca = settings.cafile.as_deref().or(settings.capath.as_deref()).unwrap_or(certfile);
        let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
        if let Some(crlfile) = &settings.crlfile {
            let text = read(crlfile)?;
            let crls = CertificateRevocationListDer::pem_slice_iter(&text)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(crlfile, format!("not a PEM CRL file: {e}")))?;
            if crls.is_empty() {
                return Err(error(crlfile, "holds no PEM CRL (`-----BEGIN X509 CRL-----`)"));
            }
            verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
        }
        let verifier =
            verifier.build().map_err(|e| error(ca, format!("cannot verify clients: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        // As Mosquitto: without require_certificate, no client certificate is asked for.
        builder.with_no_client_auth()
    };
    builder.with_single_cert(chain, key).map_err(|e| key_error(e, certfile, keyfile))
}

/// A certificate chain (not expired) and its private key, read from their files.
fn certified_key(
    certfile: &Path,
    keyfile: &Path,
    whose: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certificates(certfile)?;
    let leaf = chain.first().map(|c| c.as_ref()).unwrap_or_default();
    let validity =
        names::validity(leaf).ok_or_else(|| error(certfile, "not an X.509 certificate"))?;
    if validity.not_after < now() {
        return Err(error(
            certfile,
            format!("the {whose} certificate expired on {}", validity.not_after_text),
        ));
    }
    Ok((chain, private_key(keyfile)?))
}

/// A key rustls refused beside its certificate.
fn key_error(error_: rustls::Error, certfile: &Path, keyfile: &Path) -> TlsError {
    match error_ {
        rustls::Error::InconsistentKeys(_) => {
            error(keyfile, format!("does not match the certificate in {}", certfile.display()))
        }
        other => error(keyfile, format!("cannot be used with {}: {other}", certfile.display())),
    }
}

/// A bridge's TLS options (mosquitto.conf(5), "Configuring Bridges"): the bridge dials its
/// peer through TLS once `bridge_cafile` or `bridge_capath` is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeTls {
    /// `bridge_cafile` and `bridge_capath`: the CAs the peer's certificate must come from.
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    /// `bridge_certfile` and `bridge_keyfile`: the bridge's own certificate, for a peer with
    /// `require_certificate true`.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `bridge_insecure`: the peer's certificate is checked against the CAs but not against
    /// the host name the bridge dials.
    pub insecure: bool,
    /// `bridge_tls_version`: the lowest version offered.
    pub min_version: TlsVersion,
    /// `bridge_alpn`: the application protocol asked for (a proxy in front of the peer may
    /// route on it).
    pub alpn: Option<String>,
    /// `bridge_tls_use_os_certs` (Mosquitto 2.1): the system's CAs too.
    pub use_os_certs: bool,
    /// `bridge_ciphers` and `bridge_ciphers_tls1.3` (Mosquitto 2.1).
    pub ciphers_tls12: Option<Vec<CipherSuite>>,
    pub ciphers_tls13: Option<Vec<CipherSuite>>,
}

/// Debian's bundle of the system's trusted CAs (`ca-certificates`).
const OS_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Builds the rustls configuration a bridge dials with, reading every file now.
pub fn client_config(settings: &BridgeTls) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = roots(settings.cafile.as_deref(), settings.capath.as_deref())?;
    if settings.use_os_certs {
        let bundle = Path::new(OS_CA_BUNDLE);
        roots.add_parsable_certificates(certificates(bundle)?);
    }
    let ca = settings.cafile.as_deref().or(settings.capath.as_deref());
    let ca = ca.unwrap_or(Path::new(OS_CA_BUNDLE));
    if roots.is_empty() {
        return Err(error(ca, "holds no CA certificate to check the peer's certificate with"));
    }
    let provider =
        Arc::new(provider(settings.ciphers_tls12.as_deref(), settings.ciphers_tls13.as_deref()));
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(settings.min_version.versions())
        .map_err(|e| error(ca, format!("no cipher suite for the versions allowed: {e}")))?;
    let builder = if settings.insecure {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error(ca, format!("cannot verify the peer: {e}")))?;
        builder.dangerous().with_custom_certificate_verifier(Arc::new(insecure::AnyName(verifier)))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match (&settings.certfile, &settings.keyfile) {
        (Some(certfile), Some(keyfile)) => {
            let (chain, key) = certified_key(certfile, keyfile, "bridge's")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| key_error(e, certfile, keyfile))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = settings.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

mod insecure {
    //! `bridge_insecure true`: the peer's chain is still checked against the CAs; only a name
    //! that does not match the host dialled is let pass, as OpenSSL without host name
    //! verification does for Mosquitto.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct AnyName(pub(super) Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for AnyName {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let verified = self.0.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
            match verified {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
}

/// A listener's TLS configuration, replaced whole by SIGHUP: handshakes after a reload use the
/// new certificate, connections already made keep theirs, and a file that fails to load keeps
/// the configuration in force.
#[derive(Debug)]
pub struct ServerTls {
    settings: ListenerTls,
    current: ArcSwap<ServerConfig>,
}

impl ServerTls {
    pub fn load(settings: ListenerTls) -> Result<ServerTls, TlsError> {
        let current = ArcSwap::from_pointee(server_config(&settings)?);
        Ok(ServerTls { settings, current })
    }

    /// What new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads every file again; on error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(server_config(&self.settings)?));
        Ok(())
    }

    pub fn settings(&self) -> &ListenerTls {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_names_map_to_rustls_suites_and_unknown_ones_are_errors() {
        let suites =
            parse_ciphers("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256", false);
        assert_eq!(
            suites.unwrap(),
            [
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            ]
        );
        let error = parse_ciphers("ECDHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES256-GCM-SHA384", false);
        assert!(error.unwrap_err().contains("`DHE-RSA-AES256-GCM-SHA384` has no equivalent"));
        // A TLS 1.3 name in the TLS 1.2 list, and the other way round, are errors.
        assert!(parse_ciphers("TLS_AES_128_GCM_SHA256", false).is_err());
        assert!(parse_ciphers("ECDHE-RSA-AES128-GCM-SHA256", true).is_err());
        assert_eq!(
            parse_ciphers("TLS_AES_256_GCM_SHA384", true).unwrap(),
            [CipherSuite::TLS13_AES_256_GCM_SHA384]
        );
    }

    #[test]
    fn keywords_and_exclusions_as_openssl_reads_them() {
        let suites = parse_ciphers("HIGH:!aNULL:!MD5:!RC4:!CHACHA20:@STRENGTH", false).unwrap();
        assert_eq!(suites.len(), 4, "{suites:?}");
        assert!(suites.iter().all(|s| !format!("{s:?}").contains("CHACHA20")));
        let error = parse_ciphers("CHACHA20:!CHACHA20", false).unwrap_err();
        assert!(error.contains("no cipher left"), "{error}");
        let error = parse_ciphers("AES128-SHA", false).unwrap_err();
        assert!(error.contains("ECDHE-RSA-AES128-GCM-SHA256"), "names what is offered: {error}");
    }

    #[test]
    fn tls_versions_are_minimums_and_tls_1_1_is_refused() {
        assert_eq!(TlsVersion::parse("tlsv1.2"), Ok(TlsVersion::Tls12));
        assert_eq!(TlsVersion::Tls12.versions().len(), 2);
        assert_eq!(TlsVersion::parse("tlsv1.3").unwrap().versions().len(), 1);
        assert!(TlsVersion::parse("tlsv1.1").unwrap_err().contains("TLS 1.2 and 1.3 only"));
    }

    #[test]
    fn missing_files_are_errors_that_name_them() {
        let settings = ListenerTls {
            certfile: Some("/nonexistent/server.crt".into()),
            keyfile: Some("/nonexistent/server.key".into()),
            ..ListenerTls::default()
        };
        let error = server_config(&settings).unwrap_err();
        assert_eq!(error.file, Path::new("/nonexistent/server.crt"));
        assert!(error.to_string().starts_with("/nonexistent/server.crt: cannot read"), "{error}");
    }
}
