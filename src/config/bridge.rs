//! The bridge section of mosquitto.conf: one [`Bridge`] per `connection` block, with its
//! `topic` lines and Mosquitto's remapping rules. Pure data and parsing; the links themselves
//! are in `crate::bridge`.

use std::net::IpAddr;
use std::time::Duration;

use crate::protocol::{ProtocolVersion, QoS, TopicFilter};

/// Port of an `address` given without one.
const DEFAULT_PORT: u16 = 1883;

/// Mosquitto refuses a bridge keep alive below this (seconds).
const KEEPALIVE_MIN_SECS: u16 = 5;

/// What sets one option of a `connection` block from its value.
pub type Setter = fn(&mut Bridge, &str) -> Result<(), String>;

/// The options of a `connection` block, each with what it sets: the one list of them (the TLS
/// ones are refused before this, in `config::handling`).
pub fn setter(option: &str) -> Option<Setter> {
    let set: Setter = match option {
        "address" | "addresses" => |b, value| {
            if !b.addresses.is_empty() {
                return Err("invalid bridge configuration: a second address line".into());
            }
            b.addresses = value.split_whitespace().map(parse_address).collect::<Result<_, _>>()?;
            if b.addresses.is_empty() {
                return Err("expected host[:port] [host[:port] ...]".into());
            }
            Ok(())
        },
        "round_robin" => |b, value| {
            b.round_robin = parse_bool(value)?;
            Ok(())
        },
        "topic" => |b, value| {
            b.topics.push(parse_topic(value)?);
            Ok(())
        },
        "bridge_protocol_version" => |b, value| {
            b.protocol = match value {
                "mqttv31" => ProtocolVersion::V31,
                "mqttv311" => ProtocolVersion::V311,
                "mqttv50" => ProtocolVersion::V5,
                _ => return Err("expected mqttv31, mqttv311 or mqttv50".into()),
            };
            Ok(())
        },
        "try_private" => |b, value| {
            b.try_private = parse_bool(value)?;
            Ok(())
        },
        "notifications" => |b, value| {
            b.notifications = parse_bool(value)?;
            Ok(())
        },
        "notifications_local_only" => |b, value| {
            b.notifications_local_only = parse_bool(value)?;
            Ok(())
        },
        "notification_topic" => |b, value| {
            b.notification_topic = Some(topic_name(value)?);
            Ok(())
        },
        "cleansession" => |b, value| {
            b.cleansession = parse_bool(value)?;
            Ok(())
        },
        "local_cleansession" => |b, value| {
            b.local_cleansession = Some(parse_bool(value)?);
            Ok(())
        },
        "start_type" => |b, value| {
            b.start_type = match value {
                "automatic" => StartType::Automatic,
                "lazy" => StartType::Lazy,
                "once" => StartType::Once,
                _ => return Err("expected automatic, lazy or once".into()),
            };
            Ok(())
        },
        "threshold" => |b, value| {
            b.threshold = parse_number(value)?;
            if b.threshold == 0 {
                return Err("must be at least 1".into());
            }
            Ok(())
        },
        "idle_timeout" => |b, value| {
            b.idle_timeout = Duration::from_secs(parse_number(value)?);
            Ok(())
        },
        "restart_timeout" => |b, value| {
            b.restart_timeout = parse_restart_timeout(value)?;
            Ok(())
        },
        "keepalive_interval" => |b, value| {
            b.keepalive_secs = parse_number(value)?;
            if b.keepalive_secs < KEEPALIVE_MIN_SECS {
                return Err(format!("must be at least {KEEPALIVE_MIN_SECS} seconds"));
            }
            Ok(())
        },
        "remote_clientid" | "clientid" => |b, value| {
            b.remote_clientid = Some(non_empty(value)?);
            Ok(())
        },
        "local_clientid" => |b, value| {
            b.local_clientid = Some(non_empty(value)?);
            Ok(())
        },
        "remote_username" | "username" => |b, value| {
            b.remote_username = Some(value.into());
            Ok(())
        },
        "remote_password" | "password" => |b, value| {
            b.remote_password = Some(value.into());
            Ok(())
        },
        "local_username" => |b, value| {
            b.local_username = Some(value.into());
            Ok(())
        },
        "local_password" => |b, value| {
            b.local_password = Some(value.into());
            Ok(())
        },
        "bridge_attempt_unsubscribe" => |b, value| {
            b.attempt_unsubscribe = parse_bool(value)?;
            Ok(())
        },
        "bridge_outgoing_retain" => |b, value| {
            b.outgoing_retain = parse_bool(value)?;
            Ok(())
        },
        "bridge_max_packet_size" => |b, value| {
            b.max_packet_size = parse_number(value)?;
            Ok(())
        },
        "bridge_bind_address" => |b, value| {
            b.bind_address = Some(value.parse().map_err(|_| "not an IP address".to_string())?);
            Ok(())
        },
        "bridge_receive_maximum" => |b, value| {
            let count: u16 = parse_number(value)?;
            b.receive_maximum =
                Some(std::num::NonZeroU16::new(count).ok_or("must be 1 to 65535".to_string())?);
            Ok(())
        },
        "bridge_session_expiry_interval" => |b, value| {
            let parsed = match value.strip_prefix("0x").or(value.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => value.parse().ok(),
            };
            b.session_expiry_interval =
                Some(parsed.ok_or("expected seconds (0xFFFFFFFF: never)".to_string())?);
            Ok(())
        },
        "bridge_tcp_keepalive" => |b, value| {
            let numbers: Vec<u32> = value
                .split_whitespace()
                .map(|n| n.parse().map_err(|_| format!("`{n}` is not a number")))
                .collect::<Result<_, _>>()?;
            let [idle, interval, count] = numbers[..] else {
                return Err("expected IDLE INTERVAL COUNT".into());
            };
            if idle == 0 || interval == 0 || count == 0 {
                return Err("IDLE, INTERVAL and COUNT must be at least 1".into());
            }
            let secs = |n: u32| Duration::from_secs(u64::from(n));
            b.tcp_keepalive = Some((secs(idle), secs(interval), count));
            Ok(())
        },
        "bridge_tcp_user_timeout" => |b, value| {
            b.tcp_user_timeout = Some(Duration::from_millis(parse_number(value)?));
            Ok(())
        },
        // TLS (`crate::tls::BridgeTls`): a line that asks for TLS makes the bridge dial through
        // it, and `check_complete` refuses one without the CAs to check its peer with.
        "bridge_cafile" => |b, value| {
            b.tls_asked().cafile = Some(path(value)?);
            Ok(())
        },
        "bridge_capath" => |b, value| {
            b.tls_asked().capath = Some(path(value)?);
            Ok(())
        },
        "bridge_certfile" => |b, value| {
            b.tls_asked().certfile = Some(path(value)?);
            Ok(())
        },
        "bridge_keyfile" => |b, value| {
            b.tls_asked().keyfile = Some(path(value)?);
            Ok(())
        },
        "bridge_insecure" => |b, value| {
            match parse_bool(value)? {
                true => b.tls_asked().insecure = true,
                false => b.tls.iter_mut().for_each(|tls| tls.insecure = false),
            }
            Ok(())
        },
        "bridge_tls_version" => |b, value| {
            b.tls_asked().min_version = crate::tls::TlsVersion::parse(value)?;
            Ok(())
        },
        "bridge_tls_use_os_certs" => |b, value| {
            match parse_bool(value)? {
                true => b.tls_asked().use_os_certs = true,
                false => b.tls.iter_mut().for_each(|tls| tls.use_os_certs = false),
            }
            Ok(())
        },
        "bridge_ciphers" => |b, value| {
            b.tls_asked().ciphers_tls12 = Some(crate::tls::parse_ciphers(value, false)?);
            Ok(())
        },
        "bridge_ciphers_tls1.3" => |b, value| {
            b.tls_asked().ciphers_tls13 = Some(crate::tls::parse_ciphers(value, true)?);
            Ok(())
        },
        "bridge_alpn" => |b, value| {
            b.tls_asked().alpn = Some(non_empty(value)?);
            Ok(())
        },
        "bridge_require_ocsp" => |_, value| match parse_bool(value)? {
            false => Ok(()),
            true => Err("OCSP is not checked by Culex's TLS (rustls): refusing to start rather \
                         than dial a peer whose certificate may be revoked"
                .into()),
        },
        _ => return None,
    };
    Some(set)
}

/// One `host[:port]` of `address`/`addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which way a `topic` line carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote (Mosquitto's default).
    Out,
    /// Remote to local.
    In,
    Both,
}

impl Direction {
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    pub pattern: String,
    pub direction: Direction,
    /// A ceiling: messages cross at min(this, their own QoS).
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
    /// What the bridge subscribes to on this broker (`out`, `both`): local prefix + pattern.
    pub local_filter: TopicFilter,
    /// What the bridge subscribes to on the remote broker (`in`, `both`).
    pub remote_filter: TopicFilter,
}

impl BridgeTopic {
    /// The remote topic of a local topic this line matches: the local prefix replaced by the
    /// remote prefix.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        remap(local_topic, &self.local_filter, &self.local_prefix, &self.remote_prefix)
    }

    /// The local topic of a remote topic this line matches.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        remap(remote_topic, &self.remote_filter, &self.remote_prefix, &self.local_prefix)
    }
}

fn remap(topic: &str, filter: &TopicFilter, from: &str, to: &str) -> Option<String> {
    if !crate::protocol::filter_matches(filter, topic) {
        return None;
    }
    let rest = topic.strip_prefix(from)?;
    Some(format!("{to}{rest}"))
}

/// When the bridge connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartType {
    /// At start, and again after `restart_timeout` whenever the link drops.
    Automatic,
    /// When `threshold` messages wait; disconnects after `idle_timeout` without traffic.
    Lazy,
    /// At start; never reconnects.
    Once,
}

/// `restart_timeout BASE [CAP [STABLE]]`: a constant delay, or a jittered backoff from base to
/// cap, reset after a connection (Mosquitto 2.1: only one that stayed up `stable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartTimeout {
    pub base: Duration,
    pub cap: Option<Duration>,
    pub stable: Option<Duration>,
}

/// One `connection` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    /// Where the block starts, for errors found when it ends.
    pub(super) declared_at: (std::path::PathBuf, usize),
    pub addresses: Vec<Address>,
    pub round_robin: bool,
    pub topics: Vec<BridgeTopic>,
    pub protocol: ProtocolVersion,
    pub try_private: bool,
    pub notifications: bool,
    pub notifications_local_only: bool,
    pub notification_topic: Option<String>,
    pub cleansession: bool,
    pub local_cleansession: Option<bool>,
    pub start_type: StartType,
    pub threshold: usize,
    pub idle_timeout: Duration,
    pub restart_timeout: RestartTimeout,
    pub keepalive_secs: u16,
    pub remote_clientid: Option<String>,
    pub local_clientid: Option<String>,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    pub local_username: Option<String>,
    pub local_password: Option<String>,
    pub attempt_unsubscribe: bool,
    pub outgoing_retain: bool,
    /// 0: no limit beyond the protocol's.
    pub max_packet_size: u32,
    pub bind_address: Option<IpAddr>,
    /// `bridge_receive_maximum` (Mosquitto 2.1, 5.0 bridges): the Receive Maximum the bridge
    /// announces to its peer.
    pub receive_maximum: Option<std::num::NonZeroU16>,
    /// `bridge_session_expiry_interval` (Mosquitto 2.1, 5.0 bridges), in seconds.
    pub session_expiry_interval: Option<u32>,
    /// `bridge_tcp_keepalive IDLE INTERVAL COUNT` (Mosquitto 2.1), in seconds and probes.
    pub tcp_keepalive: Option<(Duration, Duration, u32)>,
    /// `bridge_tcp_user_timeout` (Mosquitto 2.1): how long sent data may stay unacknowledged.
    pub tcp_user_timeout: Option<Duration>,
    /// Its TLS options, once a line asks for TLS.
    pub tls: Option<crate::tls::BridgeTls>,
}

impl Bridge {
    fn tls_asked(&mut self) -> &mut crate::tls::BridgeTls {
        self.tls.get_or_insert_with(Default::default)
    }

    /// Whether the bridge's local session starts clean: `local_cleansession`, by default the
    /// value of `cleansession` (Mosquitto's rule). Kept, its queue survives restarts with
    /// persistence.
    pub fn local_session_is_clean(&self) -> bool {
        self.local_cleansession.unwrap_or(self.cleansession)
    }

    pub(super) fn new(name: &str, file: &std::path::Path, line: usize) -> Self {
        Bridge {
            name: name.to_string(),
            declared_at: (file.to_path_buf(), line),
            addresses: Vec::new(),
            round_robin: false,
            topics: Vec::new(),
            protocol: ProtocolVersion::V311,
            try_private: true,
            notifications: true,
            notifications_local_only: false,
            notification_topic: None,
            cleansession: false,
            local_cleansession: None,
            start_type: StartType::Automatic,
            threshold: 10,
            idle_timeout: Duration::from_secs(60),
            restart_timeout: RestartTimeout {
                base: Duration::from_secs(5),
                cap: Some(Duration::from_secs(30)),
                stable: None,
            },
            keepalive_secs: 60,
            remote_clientid: None,
            local_clientid: None,
            remote_username: None,
            remote_password: None,
            local_username: None,
            local_password: None,
            attempt_unsubscribe: true,
            outgoing_retain: true,
            max_packet_size: 0,
            bind_address: None,
            receive_maximum: None,
            session_expiry_interval: None,
            tcp_keepalive: None,
            tcp_user_timeout: None,
            tls: None,
        }
    }

    /// The client id on the remote broker: `remote_clientid`, else `<hostname>.<name>`.
    pub fn remote_clientid(&self) -> String {
        self.remote_clientid.clone().unwrap_or_else(|| format!("{}.{}", hostname(), self.name))
    }

    /// The client id of the bridge's session on this broker: `local.<remote client id>`.
    pub fn local_clientid(&self) -> String {
        self.local_clientid.clone().unwrap_or_else(|| format!("local.{}", self.remote_clientid()))
    }

    /// Where the link state (`1`/`0`) is published.
    pub fn notification_topic(&self) -> String {
        self.notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.remote_clientid()))
    }

    /// The first `out`/`both` line that matches a local topic, and the remote topic.
    pub fn outgoing(&self, local_topic: &str) -> Option<(&BridgeTopic, String)> {
        self.topics
            .iter()
            .filter(|t| t.direction.is_out())
            .find_map(|t| Some((t, t.to_remote(local_topic)?)))
    }

    /// The first `in`/`both` line that matches a remote topic, and the local topic.
    pub fn incoming(&self, remote_topic: &str) -> Option<(&BridgeTopic, String)> {
        self.topics
            .iter()
            .filter(|t| t.direction.is_in())
            .find_map(|t| Some((t, t.to_local(remote_topic)?)))
    }

    /// What the block must have once it ends (Mosquitto checks the same at start-up).
    pub(super) fn check_complete(&self) -> Result<(), String> {
        if self.addresses.is_empty() {
            return Err(format!("connection `{}` has no address", self.name));
        }
        if self.topics.is_empty() {
            return Err(format!("connection `{}` has no topic", self.name));
        }
        if self.remote_clientid() == self.local_clientid() {
            return Err(format!(
                "connection `{}`: local_clientid equals remote_clientid",
                self.name
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.cafile.is_none() && tls.capath.is_none() && !tls.use_os_certs {
                return Err(format!(
                    "connection `{}` asks for TLS without bridge_cafile, bridge_capath or \
                     bridge_tls_use_os_certs: the peer's certificate could not be checked, and \
                     Culex refuses to start rather than dial in plaintext",
                    self.name
                ));
            }
            if tls.certfile.is_some() != tls.keyfile.is_some() {
                return Err(format!(
                    "connection `{}`: bridge_certfile and bridge_keyfile go together",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

fn parse_address(text: &str) -> Result<Address, String> {
    let bad = || format!("`{text}` is not host[:port]");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        // [v6]:port or [v6]
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(bad()),
        };
        (host, port)
    } else if text.matches(':').count() > 1 {
        (text, DEFAULT_PORT) // a bare IPv6 address
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
            None => (text, DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Address { host: host.to_string(), port })
}

/// `topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]`, `""` being empty.
fn parse_topic(value: &str) -> Result<BridgeTopic, String> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let unquote = |word: &str| if word == "\"\"" { String::new() } else { word.to_string() };
    let (pattern, direction, qos, prefixes) = match words.as_slice() {
        [pattern] => (*pattern, "out", "0", None),
        [pattern, direction] => (*pattern, *direction, "0", None),
        [pattern, direction, qos] => (*pattern, *direction, *qos, None),
        [pattern, direction, qos, local] => (*pattern, *direction, *qos, Some((*local, ""))),
        [pattern, direction, qos, local, remote] => {
            (*pattern, *direction, *qos, Some((*local, *remote)))
        }
        _ => return Err("expected PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]".into()),
    };
    let direction = match direction {
        "out" => Direction::Out,
        "in" => Direction::In,
        "both" => Direction::Both,
        _ => return Err(format!("direction `{direction}` is not out, in or both")),
    };
    let qos = match qos {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        "2" => QoS::ExactlyOnce,
        _ => return Err(format!("QoS `{qos}` is not 0, 1 or 2")),
    };
    let (local_prefix, remote_prefix) =
        prefixes.map_or((String::new(), String::new()), |(l, r)| (unquote(l), unquote(r)));
    let pattern = unquote(pattern);
    for prefix in [&local_prefix, &remote_prefix] {
        if prefix.contains(['+', '#']) {
            return Err(format!("prefix `{prefix}` contains a wildcard"));
        }
    }
    if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
        return Err("an empty pattern needs both a local and a remote prefix".into());
    }
    let filter = |prefix: &str| {
        let full = format!("{prefix}{pattern}");
        TopicFilter::new(full.clone()).map_err(|_| format!("`{full}` is not a topic filter"))
    };
    Ok(BridgeTopic {
        local_filter: filter(&local_prefix)?,
        remote_filter: filter(&remote_prefix)?,
        pattern,
        direction,
        qos,
        local_prefix,
        remote_prefix,
    })
}

fn parse_restart_timeout(value: &str) -> Result<RestartTimeout, String> {
    let secs: Vec<u64> = value
        .split_whitespace()
        .map(|word| word.parse().map_err(|_| format!("`{word}` is not a number of seconds")))
        .collect::<Result<_, _>>()?;
    let seconds = |s: &u64| Duration::from_secs(*s);
    match secs.as_slice() {
        [base] if *base > 0 => Ok(RestartTimeout { base: seconds(base), cap: None, stable: None }),
        [base, cap, stable @ ..] if *base > 0 && cap >= base && stable.len() <= 1 => {
            Ok(RestartTimeout {
                base: seconds(base),
                cap: Some(seconds(cap)),
                stable: stable.first().map(seconds),
            })
        }
        _ => Err("expected SECONDS, or BASE CAP [STABLE] with 0 < BASE <= CAP".into()),
    }
}

fn topic_name(value: &str) -> Result<String, String> {
    crate::protocol::TopicName::new(value.to_string())
        .map(|_| value.to_string())
        .map_err(|_| format!("`{value}` is not a topic name"))
}

fn path(value: &str) -> Result<std::path::PathBuf, String> {
    Ok(non_empty(value)?.into())
}

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(value.to_string())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    super::bool_value(value).ok_or_else(|| super::BOOL_EXPECTED.to_string())
}

fn parse_number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value.parse::<T>().map_err(|_| "not a number in the allowed range".into())
}

/// This host's name, as Mosquitto puts it in default bridge client ids.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for its length; gethostname NUL-terminates within it on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(line: &str) -> BridgeTopic {
        parse_topic(line).unwrap()
    }

    #[test]
    fn the_tutorials_topic_remaps_both_ways() {
        let t = topic("room1/# both 2 sensor/ myhouse/");
        assert_eq!((t.direction, t.qos), (Direction::Both, QoS::ExactlyOnce));
        assert_eq!(t.local_filter.as_str(), "sensor/room1/#");
        assert_eq!(t.remote_filter.as_str(), "myhouse/room1/#");
        assert_eq!(t.to_remote("sensor/room1/temperature").unwrap(), "myhouse/room1/temperature");
        assert_eq!(t.to_local("myhouse/room1/x").unwrap(), "sensor/room1/x");
        assert_eq!(t.to_remote("sensor/room2/t"), None);
        assert_eq!(t.to_local("sensor/room1/t"), None);
    }

    #[test]
    fn defaults_and_empty_prefixes() {
        let t = topic("a/#");
        assert_eq!((t.direction, t.qos), (Direction::Out, QoS::AtMostOnce));
        assert_eq!(t.to_remote("a/b").unwrap(), "a/b");
        let t = topic("# in 1 \"\" remote/");
        assert_eq!(t.local_filter.as_str(), "#");
        assert_eq!(t.to_local("remote/x/y").unwrap(), "x/y");
        // An empty pattern renames one topic.
        let t = topic("\"\" out 1 here/exact there/other");
        assert_eq!(t.to_remote("here/exact").unwrap(), "there/other");
        assert_eq!(t.to_remote("here/exact/more"), None);
    }

    #[test]
    fn bad_topic_lines_say_why() {
        for (line, reason) in [
            ("a/# sideways", "direction `sideways` is not out, in or both"),
            ("a/# out 3", "QoS `3` is not 0, 1 or 2"),
            ("a/# out 0 lo+/ re/", "prefix `lo+/` contains a wildcard"),
            ("\"\" out 0 local/", "an empty pattern needs both a local and a remote prefix"),
            ("a/#/b", "`a/#/b` is not a topic filter"),
        ] {
            assert_eq!(parse_topic(line).unwrap_err(), reason, "{line}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.88").unwrap(),
            Address { host: "127.0.0.88".into(), port: 1883 }
        );
        assert_eq!(parse_address("broker.lan:8883").unwrap().port, 8883);
        assert_eq!(
            parse_address("[::1]:1999").unwrap(),
            Address { host: "::1".into(), port: 1999 }
        );
        assert_eq!(parse_address("::1").unwrap().port, 1883);
        assert!(parse_address("host:port").is_err());
    }

    #[test]
    fn first_matching_line_wins() {
        let mut bridge = Bridge::new("b", std::path::Path::new("x"), 1);
        let topic = setter("topic").unwrap();
        topic(&mut bridge, "a/# out 0 l/ r1/").unwrap();
        topic(&mut bridge, "a/b out 0 l/ r2/").unwrap();
        topic(&mut bridge, "c/# in 1 l/ r/").unwrap();
        assert_eq!(bridge.outgoing("l/a/b").unwrap().1, "r1/a/b");
        assert_eq!(bridge.outgoing("l/c/d"), None);
        assert_eq!(bridge.incoming("r/c/d").unwrap().1, "l/c/d");
        assert_eq!(bridge.incoming("r1/a/b"), None);
    }

    #[test]
    fn restart_timeout_forms() {
        assert_eq!(parse_restart_timeout("10").unwrap().cap, None);
        assert_eq!(parse_restart_timeout("2 20").unwrap().cap, Some(Duration::from_secs(20)));
        assert!(parse_restart_timeout("20 2").is_err());
        assert!(parse_restart_timeout("0").is_err());
    }
}
