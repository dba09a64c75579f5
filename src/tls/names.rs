//! What Culex reads from an X.509 certificate: its validity, and its subject's names as
//! Mosquitto turns them into user names (OpenSSL's RFC 2253 printing of the subject).

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

/// When a certificate stops being valid.
pub(super) struct Validity {
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    pub not_after_text: String,
}

pub(super) fn validity(der: &[u8]) -> Option<Validity> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let not_after = certificate.validity().not_after;
    let not_after_text = not_after.to_rfc2822().unwrap_or_else(|_| not_after.to_string());
    Some(Validity { not_after: not_after.timestamp(), not_after_text })
}

/// The subject's first Common Name (`use_identity_as_username`). None without one, or when it
/// is not text: Mosquitto refuses such a client.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let name = certificate.subject().iter_common_name().next()?;
    let text = value_text(name)?;
    // An embedded NUL would let `CN=admin\0.evil` pass for `admin` elsewhere.
    (!text.contains('\0')).then(|| text.to_string())
}

/// The whole subject as OpenSSL prints it with `XN_FLAG_RFC2253` (`use_subject_as_username`):
/// the last RDN first, attributes by short name, separated by commas (`+` inside an RDN), values
/// escaped as RFC 2253 says, bytes beyond ASCII as `\XX`. Matches
/// `openssl x509 -noout -subject -nameopt RFC2253`.
pub fn subject_rfc2253(der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let mut out = String::new();
    for (index, rdn) in
        certificate.subject().iter_rdn().collect::<Vec<_>>().iter().rev().enumerate()
    {
        if index > 0 {
            out.push(',');
        }
        for (nth, attribute) in rdn.iter().enumerate() {
            if nth > 0 {
                out.push('+');
            }
            let oid = attribute.attr_type().to_id_string();
            match short_name(&oid) {
                Some(name) => out.push_str(name),
                None => out.push_str(&oid),
            }
            out.push('=');
            escape_into(value_text(attribute)?, &mut out);
        }
    }
    Some(out)
}

fn value_text<'a>(attribute: &'a AttributeTypeAndValue<'_>) -> Option<&'a str> {
    attribute.as_str().ok().or_else(|| std::str::from_utf8(attribute.as_slice()).ok())
}

/// OpenSSL's short names for the attributes certificates carry.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// RFC 2253 escaping as OpenSSL does it: `,+"\<>;` escaped with a backslash, as are a leading
/// `#` or space and a trailing space; control characters and every byte beyond ASCII as `\XX`.
fn escape_into(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (at, byte) in value.bytes().enumerate() {
        match byte {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            b'#' if at == 0 => out.push_str("\\#"),
            b' ' if at == 0 || at == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\{byte:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_as_rfc_2253_says() {
        let mut out = String::new();
        escape_into(" a,b+c#\"d\"é ", &mut out);
        assert_eq!(out, "\\ a\\,b\\+c#\\\"d\\\"\\C3\\A9\\ ");
        let mut out = String::new();
        escape_into("#x", &mut out);
        assert_eq!(out, "\\#x");
    }
}
