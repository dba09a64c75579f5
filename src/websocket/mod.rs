//! WebSockets as MQTT uses them (MQTT 5.0 section 6, RFC 6455): what a `protocol websockets`
//! listener answers to the HTTP request a connection opens with: the upgrade to the `mqtt`
//! subprotocol, a static file of `http_dir`, or a refusal. Pure: request bytes in, decision
//! and response bytes out. The frames after the upgrade: `framing`, as pure.

mod framing;

use std::path::{Component, Path, PathBuf};

use base64::Engine;
use sha1::{Digest, Sha1};

pub use framing::{Framing, Payload};

/// The subprotocols MQTT clients ask for: `mqtt` (3.1.1 and 5.0) and `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// RFC 6455's key suffix for Sec-WebSocket-Accept.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers a request may carry.
const HEADERS_MAX: usize = 64;

/// The request head's bound unless `websockets_headers_size` says otherwise. libwebsockets
/// (Mosquitto) counts 1024 bytes of the headers it keeps; Culex bounds the whole head, cookies
/// included, so the default is larger.
pub const HEADERS_SIZE_DEFAULT: usize = 8 << 10;

/// The largest file `http_dir` serves.
pub const FILE_BYTES_MAX: u64 = 16 << 20;

/// What a listener's WebSocket options ask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The most bytes the request head (request line and headers) may take.
    pub headers_size_max: usize,
    /// `http_dir`: files served to requests that are not upgrades.
    pub http_dir: Option<PathBuf>,
    /// `websockets_origin` (Mosquitto 2.1): when any, an upgrade's Origin must be one of them.
    pub origins: Vec<String>,
}

/// What to do with the bytes a connection has sent so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The request head has not all arrived: read more (at most `headers_size_max` in all).
    Incomplete,
    /// Upgrade: send `response`; the bytes after the first `head_len` are WebSocket frames.
    Upgrade { response: Vec<u8>, head_len: usize },
    /// A file of `http_dir`: send it (or `file_response`'s refusal), then close.
    File { path: PathBuf, head_only: bool },
    /// Send `response` and close; `why` is for the log.
    Refuse { response: Vec<u8>, why: String },
}

/// The answer to the request head in `bytes`.
pub fn answer(bytes: &[u8], settings: &Settings) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() < settings.headers_size_max => {
            return Answer::Incomplete
        }
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "Request Header Fields Too Large", "request head too large")
        }
        Err(error) => return refuse(400, "Bad Request", &format!("not HTTP: {error}")),
    };
    if head_len > settings.headers_size_max {
        return refuse(431, "Request Header Fields Too Large", "request head too large");
    }
    let headers: &[httparse::Header] = request.headers;
    let header = |name| values(headers, name);
    let tokens = |name| values(headers, name).flat_map(list);
    let method = request.method.unwrap_or("");
    let upgrade = tokens("Upgrade").any(|t| t.eq_ignore_ascii_case("websocket"))
        && tokens("Connection").any(|t| t.eq_ignore_ascii_case("upgrade"));
    if !upgrade {
        let path = request.path.unwrap_or("/");
        return match (method, &settings.http_dir) {
            ("GET" | "HEAD", Some(dir)) => match static_path(dir, path) {
                Some(path) => Answer::File { path, head_only: method == "HEAD" },
                None => refuse(404, "Not Found", "no such file"),
            },
            ("GET" | "HEAD", None) => refuse(404, "Not Found", "not a WebSocket upgrade"),
            _ => refuse(405, "Method Not Allowed", "not a WebSocket upgrade"),
        };
    }
    if method != "GET" || request.version != Some(1) {
        return refuse(400, "Bad Request", "an upgrade must be GET over HTTP/1.1");
    }
    if !header("Sec-WebSocket-Version").any(|v| v == "13") {
        let response = "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
                        Content-Length: 0\r\nConnection: close\r\n\r\n";
        return Answer::Refuse {
            response: response.as_bytes().to_vec(),
            why: "WebSocket version other than 13".into(),
        };
    }
    let key = header("Sec-WebSocket-Key").next().unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map_or(true, |k| k.len() != 16) {
        return refuse(400, "Bad Request", "no valid Sec-WebSocket-Key");
    }
    if !settings.origins.is_empty() {
        let origin = header("Origin").next().unwrap_or("");
        if !settings.origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)) {
            return refuse(403, "Forbidden", &format!("origin `{origin}` not allowed"));
        }
    }
    // The client's first choice among those MQTT defines; none asked for is `mqtt` unnamed.
    let offered: Vec<&str> = tokens("Sec-WebSocket-Protocol").collect();
    let chosen = offered
        .iter()
        .find(|offer| SUBPROTOCOLS.iter().any(|ours| ours.eq_ignore_ascii_case(offer)));
    if chosen.is_none() && !offered.is_empty() {
        return refuse(400, "Bad Request", &format!("subprotocols {offered:?}, none of them MQTT"));
    }
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(protocol) = chosen {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    Answer::Upgrade { response: response.into_bytes(), head_len }
}

/// The values of every header called `name` (any case).
fn values<'a>(headers: &'a [httparse::Header<'a>], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok().map(str::trim))
}

/// The tokens of a comma-separated header value.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|t| !t.is_empty())
}

/// Sec-WebSocket-Accept for a client's key (RFC 6455 section 4.2.2).
fn accept_key(key: &str) -> String {
    let digest = Sha1::new().chain_update(key).chain_update(ACCEPT_GUID).finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

fn refuse(status: u16, reason: &str, why: &str) -> Answer {
    let response =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Answer::Refuse { response: response.into_bytes(), why: why.to_string() }
}

/// The file under `dir` a request path names: query and fragment cut, percent escapes
/// decoded, `index.html` for a directory. None for a path that would leave the folder (`..`,
/// an absolute part, a NUL). Symbolic links are checked when the file is opened
/// (`file_response`).
pub fn static_path(dir: &Path, request_path: &str) -> Option<PathBuf> {
    let path = request_path.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode(path)?;
    let mut file = dir.to_path_buf();
    for component in Path::new(decoded.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => file.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if decoded.ends_with('/') || file == dir {
        file.push("index.html");
    }
    Some(file)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.contains('\0')).then_some(decoded)
}

/// The whole response for a file of `http_dir` (read here, so call it off the shard's
/// thread): the file if it is a regular file inside `dir` (symbolic links resolved) of at most
/// `FILE_BYTES_MAX`, else a refusal.
pub fn file_response(dir: &Path, path: &Path, head_only: bool) -> Vec<u8> {
    let inside = match (dir.canonicalize(), path.canonicalize()) {
        (Ok(dir), Ok(file)) => file.starts_with(&dir) && file.is_file(),
        _ => false,
    };
    let status = |code: u16, reason: &str| {
        format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    if !inside {
        return status(404, "Not Found");
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > FILE_BYTES_MAX => return status(403, "Forbidden"),
        Ok(_) => {}
        Err(_) => return status(404, "Not Found"),
    }
    let Ok(body) = std::fs::read(path) else { return status(403, "Forbidden") };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        content_type(path),
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(&body);
    }
    response
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { headers_size_max: HEADERS_SIZE_DEFAULT, ..Settings::default() }
    }

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\nConnection: keep-alive, \
             Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn response(answer: Answer) -> String {
        match answer {
            Answer::Upgrade { response, .. } | Answer::Refuse { response, .. } => {
                String::from_utf8(response).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_upgrade_gets_rfc_6455s_accept_key_and_the_mqtt_subprotocol() {
        let request = upgrade("Sec-WebSocket-Protocol: chat, mqtt\r\n");
        let answer = answer(request.as_bytes(), &settings());
        assert!(matches!(answer, Answer::Upgrade { head_len, .. } if head_len == request.len()));
        let text = response(answer);
        // RFC 6455 section 1.3's example key and answer.
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{text}");
        let text = response(super::answer(
            upgrade("Sec-WebSocket-Protocol: mqttv3.1\r\n").as_bytes(),
            &settings(),
        ));
        assert!(text.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{text}");
        // No subprotocol asked for: none named back.
        let text = response(super::answer(upgrade("").as_bytes(), &settings()));
        assert!(text.starts_with("HTTP/1.1 101 ") && !text.contains("Protocol:"), "{text}");
        let text = response(super::answer(
            upgrade("Sec-WebSocket-Protocol: chat\r\n").as_bytes(),
            &settings(),
        ));
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    }

    #[test]
    fn a_partial_head_waits_and_a_long_one_is_refused() {
        let request = upgrade("");
        let partial = &request.as_bytes()[..request.len() - 3];
        assert_eq!(answer(partial, &settings()), Answer::Incomplete);
        let small = Settings { headers_size_max: 64, ..settings() };
        assert!(response(answer(partial, &small)).starts_with("HTTP/1.1 431 "));
        assert!(response(answer(request.as_bytes(), &small)).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn versions_keys_and_origins_are_checked() {
        let old = upgrade("").replace("Version: 13", "Version: 8");
        let text = response(answer(old.as_bytes(), &settings()));
        assert!(text.starts_with("HTTP/1.1 426 ") && text.contains("Version: 13"), "{text}");
        let keyless = upgrade("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert!(response(answer(keyless.as_bytes(), &settings())).starts_with("HTTP/1.1 400 "));
        let origins = Settings { origins: vec!["https://app.example".into()], ..settings() };
        let good = upgrade("Origin: https://app.example\r\n");
        assert!(matches!(answer(good.as_bytes(), &origins), Answer::Upgrade { .. }));
        let bad = upgrade("Origin: https://evil.example\r\n");
        assert!(response(answer(bad.as_bytes(), &origins)).starts_with("HTTP/1.1 403 "));
        assert!(response(answer(b"\x10\x0c\x00\x04MQTT", &settings())).starts_with("HTTP/1.1 400 "));
    }

    #[test]
    fn static_paths_never_leave_the_folder() {
        let dir = Path::new("/srv/www");
        assert_eq!(static_path(dir, "/"), Some(dir.join("index.html")));
        assert_eq!(static_path(dir, "/app/main.js?v=2"), Some(dir.join("app/main.js")));
        assert_eq!(static_path(dir, "/a%20b.html"), Some(dir.join("a b.html")));
        assert_eq!(static_path(dir, "/docs/"), Some(dir.join("docs/index.html")));
        for escape in
            ["/../etc/passwd", "/a/../../etc/passwd", "/%2e%2e/etc/passwd", "/a%00.html", "/%zz"]
        {
            assert_eq!(static_path(dir, escape), None, "{escape}");
        }
    }

    proptest::proptest! {
        /// Any bytes give an answer (or a wait for more), never a panic, and an answer never
        /// claims more of the bytes than there are.
        #[test]
        fn any_request_bytes_are_answered(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            upgrade_prefix in proptest::bool::ANY,
        ) {
            let mut input = if upgrade_prefix { upgrade("").into_bytes() } else { Vec::new() };
            input.truncate(input.len() / 2);
            input.extend_from_slice(&bytes);
            if let Answer::Upgrade { head_len, .. } = answer(&input, &settings()) {
                proptest::prop_assert!(head_len <= input.len());
            }
            let text = String::from_utf8_lossy(&bytes).to_string();
            let _ = static_path(Path::new("/srv"), &text);
        }
    }
}
