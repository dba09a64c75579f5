//! The PROXY protocol (HAProxy's, versions 1 and 2) as Mosquitto 2.1 reads it
//! (`enable_proxy_protocol`): the header a proxy in front of the broker sends before anything
//! else, with the client's address and, in version 2, what the proxy's TLS termination learned
//! (the version, the cipher, whether the client presented a verified certificate and its common
//! name). Pure: bytes in, header out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which version a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Version 2's signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 1's longest header, CRLF included (the specification's 107 bytes).
const V1_BYTES_MAX: usize = 107;

/// The most bytes of addresses and TLVs a version 2 header may carry. Mosquitto allows 500;
/// a proxy that also sends its unique id and SNI may need more, and the bound only has to keep
/// a client from holding memory.
pub const V2_BODY_BYTES_MAX: usize = 1024;

/// What the proxy said about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The client's address as the proxy saw it: `1.2.3.4:5678`, `[::1]:5678`, or a Unix
    /// socket's path.
    pub source: String,
    /// Version 2 with TLS terminated at the proxy: what the client's TLS was.
    pub tls: Option<ProxiedTls>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxiedTls {
    /// The client presented a certificate and the proxy verified it.
    pub verified_certificate: bool,
    /// The certificate's subject common name (`PP2_SUBTYPE_SSL_CN`).
    pub common_name: Option<String>,
    pub version: Option<String>,
    pub cipher: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the listener requires one)")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Version 2's LOCAL command and version 1's UNKNOWN: the proxy's own connection (a
    /// health check), with no client behind it; refused, as Mosquitto refuses it.
    #[error("a PROXY header without a client address (LOCAL or UNKNOWN)")]
    NoClient,
}

/// What a listener asks of the PROXY headers it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub version: Version,
    /// `proxy_protocol_v2_require_tls`: the client must have used TLS to the proxy.
    pub require_tls: bool,
    /// `require_certificate`: the proxy must have verified a client certificate.
    pub require_certificate: bool,
    /// `use_identity_as_username`: the certificate's common name is the user name.
    pub name_from_certificate: bool,
}

impl Policy {
    /// Whether a client behind `header` may go on, and the user name its certificate gives
    /// when the listener takes one; `Err` says why not.
    pub fn admit(&self, header: &Header) -> Result<Option<String>, &'static str> {
        let tls = header.tls.as_ref();
        if self.require_tls && tls.is_none() {
            return Err("client did not connect using TLS");
        }
        if self.require_certificate && !tls.is_some_and(|tls| tls.verified_certificate) {
            return Err("client did not provide a verified certificate");
        }
        Ok(self.name_from_certificate.then(|| tls.and_then(|t| t.common_name.clone())).flatten())
    }
}

/// The header at the start of `bytes` and how many bytes it took; `Ok(None)` while it is
/// incomplete.
pub fn parse(bytes: &[u8], version: Version) -> Result<Option<(Header, usize)>, ProxyError> {
    match version {
        Version::V1 => parse_v1(bytes),
        Version::V2 => parse_v2(bytes),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let prefix = b"PROXY ";
    let seen = bytes.len().min(prefix.len());
    if bytes[..seen] != prefix[..seen] {
        return Err(ProxyError::Missing);
    }
    let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        if bytes.len() >= V1_BYTES_MAX {
            return Err(ProxyError::Malformed("version 1 header longer than 107 bytes"));
        }
        return Ok(None);
    };
    if end + 2 > V1_BYTES_MAX {
        return Err(ProxyError::Malformed("version 1 header longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&bytes[prefix.len()..end])
        .map_err(|_| ProxyError::Malformed("version 1 header is not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let (ip, destination, ports): (std::net::IpAddr, _, _) = match fields.as_slice() {
        ["UNKNOWN", ..] => return Err(ProxyError::NoClient),
        ["TCP4", source, destination, source_port, destination_port] => {
            let ip = source.parse::<Ipv4Addr>().map_err(|_| bad_v1())?;
            let destination = destination.parse::<Ipv4Addr>().map(|_| ());
            (ip.into(), destination, (source_port, destination_port))
        }
        ["TCP6", source, destination, source_port, destination_port] => {
            let ip = source.parse::<Ipv6Addr>().map_err(|_| bad_v1())?;
            let destination = destination.parse::<Ipv6Addr>().map(|_| ());
            (ip.into(), destination, (source_port, destination_port))
        }
        _ => return Err(bad_v1()),
    };
    destination.map_err(|_| bad_v1())?;
    port_v1(ports.1)?;
    let source = SocketAddr::new(ip, port_v1(ports.0)?).to_string();
    Ok(Some((Header { source, tls: None }, end + 2)))
}

fn bad_v1() -> ProxyError {
    ProxyError::Malformed("version 1 header is not `PROXY TCP4|TCP6 SRC DST SPORT DPORT`")
}

/// A version 1 port: decimal, no sign, no leading zero (the specification's form).
fn port_v1(text: &str) -> Result<u16, ProxyError> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return Err(bad_v1());
    }
    text.parse().map_err(|_| bad_v1())
}

fn parse_v2(bytes: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let seen = bytes.len().min(SIGNATURE.len());
    if bytes[..seen] != SIGNATURE[..seen] {
        return Err(ProxyError::Missing);
    }
    let Some(fixed) = bytes.get(..16) else { return Ok(None) };
    let (version_command, family) = (fixed[12], fixed[13]);
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("version 2 signature with another version"));
    }
    if length > V2_BODY_BYTES_MAX {
        return Err(ProxyError::Malformed("version 2 header longer than 1024 bytes"));
    }
    let Some(body) = bytes.get(16..16 + length) else { return Ok(None) };
    match version_command & 0x0f {
        0x0 => return Err(ProxyError::NoClient),
        0x1 => {}
        _ => return Err(ProxyError::Malformed("version 2 command neither LOCAL nor PROXY")),
    }
    let short = || ProxyError::Malformed("version 2 addresses shorter than their family's");
    let (source, addresses_len) = match family {
        // TCP or UDP over IPv4: source, destination, source port, destination port.
        0x11 | 0x12 => {
            let a = body.get(..12).ok_or_else(short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])).to_string(), 12)
        }
        0x21 | 0x22 => {
            let a = body.get(..36).ok_or_else(short)?;
            let octets: [u8; 16] = a[..16].try_into().map_err(|_| short())?;
            let port = u16::from_be_bytes([a[32], a[33]]);
            (SocketAddr::new(Ipv6Addr::from(octets).into(), port).to_string(), 36)
        }
        // Unix stream or datagram: two NUL-padded paths of 108 bytes.
        0x31 | 0x32 => {
            let a = body.get(..216).ok_or_else(short)?;
            let path = &a[..108];
            let path = &path[..path.iter().position(|b| *b == 0).unwrap_or(108)];
            (String::from_utf8_lossy(path).into_owned(), 216)
        }
        0x00 => return Err(ProxyError::NoClient),
        _ => return Err(ProxyError::Malformed("version 2 address family unknown")),
    };
    let tls = tls_of(&body[addresses_len..])?;
    Ok(Some((Header { source, tls }, 16 + length)))
}

/// `PP2_TYPE_SSL` and its sub-TLVs, if the TLVs carry it.
fn tls_of(mut tlvs: &[u8]) -> Result<Option<ProxiedTls>, ProxyError> {
    let mut tls = None;
    while !tlvs.is_empty() {
        let (kind, value, rest) = tlv(tlvs)?;
        tlvs = rest;
        if kind != PP2_TYPE_SSL {
            continue;
        }
        // client flags (1 byte), verify result (4 bytes, 0 when verified), sub-TLVs.
        let (&client, after) = value.split_first().ok_or(TLV_SHORT)?;
        let verify = after.get(..4).ok_or(TLV_SHORT)?;
        let verified = u32::from_be_bytes([verify[0], verify[1], verify[2], verify[3]]) == 0;
        let presented = client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS) != 0;
        let mut found = ProxiedTls {
            verified_certificate: client & PP2_CLIENT_SSL != 0 && presented && verified,
            ..ProxiedTls::default()
        };
        let mut sub = &after[4..];
        while !sub.is_empty() {
            let (kind, value, rest) = tlv(sub)?;
            sub = rest;
            let text = || String::from_utf8(value.to_vec()).ok();
            match kind {
                PP2_SUBTYPE_SSL_VERSION => found.version = text(),
                PP2_SUBTYPE_SSL_CN => {
                    found.common_name = Some(text().filter(|cn| !cn.contains('\0')).ok_or(
                        ProxyError::Malformed("version 2 certificate common name is not text"),
                    )?)
                }
                PP2_SUBTYPE_SSL_CIPHER => found.cipher = text(),
                _ => {}
            }
        }
        tls = Some(found);
    }
    Ok(tls)
}

const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;
const TLV_SHORT: ProxyError = ProxyError::Malformed("version 2 TLV runs past the header");

/// One type-length-value: (type, value, the rest).
fn tlv(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), ProxyError> {
    let head = bytes.get(..3).ok_or(TLV_SHORT)?;
    let length = usize::from(u16::from_be_bytes([head[1], head[2]]));
    let value = bytes.get(3..3 + length).ok_or(TLV_SHORT)?;
    Ok((head[0], value, &bytes[3 + length..]))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A version 2 header from a proxy that terminated TLS (`send-proxy-v2-ssl-cn`).
    pub fn v2_header(source: [u8; 4], port: u16, tls: Option<(bool, &str)>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&source);
        body.extend_from_slice(&[127, 0, 0, 1]);
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&1883u16.to_be_bytes());
        if let Some((verified, cn)) = tls {
            let mut ssl = vec![PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN];
            ssl.extend_from_slice(&u32::from(!verified).to_be_bytes());
            for (kind, value) in [(PP2_SUBTYPE_SSL_VERSION, "TLSv1.3"), (PP2_SUBTYPE_SSL_CN, cn)] {
                ssl.push(kind);
                ssl.extend_from_slice(&(value.len() as u16).to_be_bytes());
                ssl.extend_from_slice(value.as_bytes());
            }
            body.push(PP2_TYPE_SSL);
            body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
            body.extend_from_slice(&ssl);
        }
        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11]);
        header.extend_from_slice(&(body.len() as u16).to_be_bytes());
        header.extend_from_slice(&body);
        header
    }

    #[test]
    fn version_1_headers_give_the_clients_address() {
        let header = b"PROXY TCP4 192.0.2.5 127.0.0.1 6275 1883\r\n\x10rest";
        let (parsed, used) = parse(header, Version::V1).unwrap().unwrap();
        assert_eq!((parsed.source.as_str(), used), ("192.0.2.5:6275", header.len() - 5));
        let six = b"PROXY TCP6 2001:db8::1 ::1 65535 1883\r\n";
        assert_eq!(parse(six, Version::V1).unwrap().unwrap().0.source, "[2001:db8::1]:65535");
        assert_eq!(parse(b"PROXY TCP4 192.0.2.5 ", Version::V1), Ok(None));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n", Version::V1), Err(ProxyError::NoClient));
        assert_eq!(parse(b"\x10\x0c\x00\x04MQTT", Version::V1), Err(ProxyError::Missing));
        for bad in [
            &b"PROXY TCP4 192.0.2.5 127.0.0.1 06275 1883\r\n"[..],
            b"PROXY TCP4 ::1 127.0.0.1 1 1883\r\n",
            b"PROXY TCP4 192.0.2.5 127.0.0.1 1 1883 extra\r\n",
        ] {
            assert!(matches!(parse(bad, Version::V1), Err(ProxyError::Malformed(_))), "{bad:?}");
        }
        let long = [&b"PROXY TCP6 "[..], &[b'1'; 100]].concat();
        assert!(matches!(parse(&long, Version::V1), Err(ProxyError::Malformed(_))));
    }

    #[test]
    fn version_2_headers_give_the_address_and_the_proxys_tls() {
        let header = v2_header([192, 0, 2, 5], 6275, Some((true, "device-17")));
        let (parsed, used) = parse(&header, Version::V2).unwrap().unwrap();
        assert_eq!(used, header.len());
        assert_eq!(parsed.source, "192.0.2.5:6275");
        let tls = parsed.tls.unwrap();
        assert!(tls.verified_certificate);
        assert_eq!(tls.common_name.as_deref(), Some("device-17"));
        assert_eq!(tls.version.as_deref(), Some("TLSv1.3"));
        let unverified = v2_header([192, 0, 2, 5], 1, Some((false, "x")));
        assert!(
            !parse(&unverified, Version::V2).unwrap().unwrap().0.tls.unwrap().verified_certificate
        );
        // Every prefix is incomplete, never an error.
        for end in 0..header.len() {
            assert_eq!(parse(&header[..end], Version::V2), Ok(None), "{end}");
        }
        let mut local = v2_header([0; 4], 0, None);
        local[12] = 0x20;
        assert_eq!(parse(&local, Version::V2), Err(ProxyError::NoClient));
        let mut long = v2_header([1; 4], 1, None);
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(parse(&long, Version::V2), Err(ProxyError::Malformed(_))));
        assert_eq!(parse(b"PROXY TCP4", Version::V2), Err(ProxyError::Missing));
    }

    proptest::proptest! {
        /// Any bytes give a header, a wait for more, or an error: never a panic.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), v2 in proptest::bool::ANY) {
            let version = if v2 { Version::V2 } else { Version::V1 };
            let mut input = if v2 { SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            input.extend_from_slice(&bytes);
            let _ = parse(&input, version);
            let _ = parse(&bytes, version);
        }
    }
}
