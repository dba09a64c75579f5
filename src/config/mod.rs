//! mosquitto.conf and the command line turned into a validated [`Config`]. Reads files; never
//! opens sockets. An unknown option or a bad value is an error naming file, line and option; a
//! Mosquitto option Culex does not implement yet is a warning naming file and line.

mod bridge;
mod reload;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use bridge::{Address, Bridge, BridgeTopic, Direction, RestartTimeout, StartType};
pub use reload::Changes;

/// One `listener` (or the default one from `port`, `-p`, or no configuration at all), with
/// the options that belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// Empty: every address (`listener 1883` with no address binds all interfaces); else the
    /// address given, or every address its host name resolved to at start-up.
    pub bind_address: Vec<IpAddr>,
    /// `listener 0 PATH`: a Unix socket at PATH instead of TCP.
    pub unix_path: Option<PathBuf>,
    /// `socket_domain`: without an address, bind only this family (`None`: both).
    pub socket_domain: Option<SocketDomain>,
    /// `bind_interface`: accept only connections that arrive on this network interface.
    pub bind_interface: Option<String>,
    /// `max_connections`: clients connected through this listener at once (`None`: no limit).
    pub max_connections: Option<usize>,
    /// Culex's `max_connection_rate`: new connections a second this listener accepts, with a
    /// burst of as many (0: no limit, the default). What a reconnect storm may cost.
    pub max_connection_rate: u32,
    /// `protocol websockets`: MQTT over WebSockets (over TLS with `certfile`).
    pub websockets: bool,
    /// `http_dir`: with `protocol websockets`, files served to plain HTTP requests.
    pub http_dir: Option<PathBuf>,
    /// `websockets_origin` (Mosquitto 2.1, repeatable): the Origins allowed to upgrade.
    pub websockets_origins: Vec<String>,
    /// `mount_point`: prefixed to every topic its clients publish, subscribe to or leave as a
    /// will, and taken off what they receive.
    pub mount_point: Option<String>,
    /// With `per_listener_settings true`: the access settings given after this `listener`.
    pub security: ListenerSecurity,
    /// `max_topic_alias`: the Topic Alias Maximum announced to its 5.0 clients (0: none).
    pub max_topic_alias: u16,
    /// `max_topic_alias_broker` (Mosquitto 2.1): the most topic aliases the broker sets toward
    /// one of its 5.0 clients, whatever larger maximum the client announced.
    pub max_topic_alias_broker: u16,
    /// `accept_protocol_versions` (Mosquitto 2.1): the protocol levels (3, 4, 5) it takes;
    /// `None`: all.
    pub protocol_levels: Option<Vec<u8>>,
    /// `enable_proxy_protocol 1|2` (Mosquitto 2.1): every connection starts with a PROXY
    /// header from a trusted proxy, which gives the client's address (and, in version 2, what
    /// the proxy's TLS learned: `require_certificate` and `use_identity_as_username` then apply
    /// to it).
    pub proxy_protocol: Option<crate::proxy::Version>,
    /// `proxy_protocol_v2_require_tls`.
    pub proxy_require_tls: bool,
    /// Its TLS options, once any line asks for TLS (a certificate, a CA, a version, ciphers,
    /// `require_certificate true`, ...); such a listener is refused without certfile and keyfile.
    pub tls: Option<crate::tls::ListenerTls>,
    /// Where each of its TLS and PROXY options was given, for errors found once the listener
    /// is complete.
    checked_lines: Vec<OptionAt>,
}

/// Where an option was given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OptionAt {
    option: String,
    file: PathBuf,
    line: usize,
}

impl OptionAt {
    fn of(line: &Line) -> OptionAt {
        OptionAt {
            option: line.option.to_string(),
            file: line.file.to_path_buf(),
            line: line.number,
        }
    }
}

const PROXY_REQUIRE_TLS: &str = "proxy_protocol_v2_require_tls";

/// What `per_listener_settings true` makes each listener's own; unset ones take Mosquitto's
/// listener defaults (`AuthConfig::default`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerSecurity {
    pub allow_anonymous: Option<bool>,
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    pub allow_zero_length_clientid: Option<bool>,
    pub auto_id_prefix: Option<String>,
}

/// Mosquitto's `socket_domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketDomain {
    Ipv4,
    Ipv6,
}

/// An address to bind, and whether failing to bind it may be let pass (the IPv6 half of a
/// listener given no address, on a host without IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress {
    pub addr: SocketAddr,
    pub optional: bool,
}

impl Listener {
    pub fn new(port: u16, bind_address: Vec<IpAddr>) -> Self {
        Listener {
            port,
            bind_address,
            unix_path: None,
            socket_domain: None,
            bind_interface: None,
            max_connections: None,
            max_connection_rate: 0,
            websockets: false,
            http_dir: None,
            websockets_origins: Vec::new(),
            mount_point: None,
            security: ListenerSecurity::default(),
            max_topic_alias: MAX_TOPIC_ALIAS_DEFAULT,
            max_topic_alias_broker: MAX_TOPIC_ALIAS_DEFAULT,
            protocol_levels: None,
            proxy_protocol: None,
            proxy_require_tls: false,
            tls: None,
            checked_lines: Vec::new(),
        }
    }

    /// What this listener asks of PROXY headers, if it reads them.
    pub fn proxy_policy(&self) -> Option<crate::proxy::Policy> {
        let tls = self.tls.clone().unwrap_or_default();
        Some(crate::proxy::Policy {
            version: self.proxy_protocol?,
            require_tls: self.proxy_require_tls,
            require_certificate: tls.require_certificate,
            name_from_certificate: tls.username_from_certificate.is_some(),
        })
    }

    /// The TLS options of a listener a line asks TLS of, and where that line is.
    fn tls_asked(&mut self, line: &Line) -> &mut crate::tls::ListenerTls {
        self.checked_lines.push(OptionAt::of(line));
        self.tls.get_or_insert_with(Default::default)
    }

    /// The options of a complete listener that make sense only together: an error names the
    /// line of the option that needs another.
    fn check(&self) -> Result<(), ConfigError> {
        let require_tls = self.checked_lines.iter().find(|at| at.option == PROXY_REQUIRE_TLS);
        if let Some(at) = require_tls {
            if self.proxy_require_tls && self.proxy_protocol != Some(crate::proxy::Version::V2) {
                return Err(ConfigError::InvalidValue {
                    file: at.file.clone(),
                    line: at.line,
                    option: at.option.clone(),
                    reason: "needs `enable_proxy_protocol 2` on the same listener".into(),
                });
            }
        }
        match self.proxy_protocol {
            Some(_) => self.check_proxied_tls(),
            None => self.check_tls(),
        }
    }

    /// Behind the PROXY protocol the proxy terminates TLS (Mosquitto 2.1's rule): only
    /// `require_certificate` and `use_identity_as_username` apply, to what the proxy says of
    /// the client's certificate, and only version 2 says anything.
    fn check_proxied_tls(&self) -> Result<(), ConfigError> {
        let proxied = |at: &OptionAt, reason: &str| {
            Err(ConfigError::Refused {
                file: at.file.clone(),
                line: at.line,
                option: at.option.clone(),
                reason: reason.to_string(),
            })
        };
        for at in &self.checked_lines {
            match at.option.as_str() {
                PROXY_REQUIRE_TLS => {}
                "require_certificate" | "use_identity_as_username"
                    if self.proxy_protocol == Some(crate::proxy::Version::V1) =>
                {
                    return proxied(
                        at,
                        "needs `enable_proxy_protocol 2`: version 1 headers carry nothing of the \
                         client's TLS, and every client would be refused",
                    )
                }
                "require_certificate" | "use_identity_as_username" => {}
                _ => {
                    return proxied(
                        at,
                        "cannot be used with `enable_proxy_protocol`: the proxy in front \
                         terminates TLS (only require_certificate and use_identity_as_username \
                         apply, to what the proxy tells of the client)",
                    )
                }
            }
        }
        let tls = self.tls.clone().unwrap_or_default();
        if tls.username_from_certificate.is_some() && !tls.require_certificate {
            let at = self.checked_lines.iter().find(|at| at.option == "use_identity_as_username");
            if let Some(at) = at {
                return proxied(at, "needs `require_certificate true`");
            }
        }
        Ok(())
    }

    /// A listener's TLS options that make sense only together: an error names the line of the
    /// option that needs another.
    fn check_tls(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let at = |option: &str| {
            let found = self.checked_lines.iter().find(|at| at.option == option);
            found.or(self.checked_lines.iter().find(|at| at.option != PROXY_REQUIRE_TLS)).cloned()
        };
        let fail = |option: &str, reason: String| {
            let at = at(option).unwrap_or(OptionAt {
                option: option.to_string(),
                file: PathBuf::new(),
                line: 0,
            });
            Err(ConfigError::Refused { file: at.file, line: at.line, option: at.option, reason })
        };
        if tls.certfile.is_none() || tls.keyfile.is_none() {
            let missing = if tls.certfile.is_none() { "certfile" } else { "keyfile" };
            let first = self
                .checked_lines
                .iter()
                .find(|at| at.option != PROXY_REQUIRE_TLS)
                .map_or("", |at| at.option.as_str());
            return fail(
                first,
                format!(
                    "asks for TLS on listener {}, which has no `{missing}`: a TLS listener needs \
                     both certfile and keyfile, and Culex refuses to start rather than serve \
                     plaintext",
                    self.port
                ),
            );
        }
        if tls.require_certificate && tls.cafile.is_none() && tls.capath.is_none() {
            return fail(
                "require_certificate",
                "needs `cafile` or `capath`: the CAs that client certificates must come from"
                    .into(),
            );
        }
        if tls.username_from_certificate.is_some() && !tls.require_certificate {
            let option = ["use_identity_as_username", "use_subject_as_username"]
                .into_iter()
                .find(|option| at(option).is_some_and(|at| at.option == *option))
                .unwrap_or("use_identity_as_username");
            return fail(
                option,
                "needs `require_certificate true`: without it no client sends a certificate \
                 and every client would be refused"
                    .into(),
            );
        }
        Ok(())
    }

    /// The addresses to bind. Mosquitto's default listener binds loopback only; a listener
    /// with no address binds every IPv4 and every IPv6 address (IPv6 sockets are V6ONLY), or
    /// those of its `socket_domain`.
    pub fn bind_addresses(&self, loopback_only: bool) -> Vec<BindAddress> {
        if self.unix_path.is_some() {
            return Vec::new();
        }
        if !self.bind_address.is_empty() {
            let bind = |ip: &IpAddr| BindAddress {
                addr: SocketAddr::new(*ip, self.port),
                optional: false,
            };
            return self.bind_address.iter().map(bind).collect();
        }
        let (v4, v6): (IpAddr, IpAddr) = if loopback_only {
            (Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into())
        } else {
            (Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into())
        };
        let bind = |ip, optional| BindAddress { addr: SocketAddr::new(ip, self.port), optional };
        match self.socket_domain {
            None => vec![bind(v4, false), bind(v6, true)],
            Some(SocketDomain::Ipv4) => vec![bind(v4, false)],
            Some(SocketDomain::Ipv6) => vec![bind(v6, false)],
        }
    }
}

/// Culex's `persistence_sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistenceSync {
    /// A change is durable before anyone hears of it (PUBACK, PUBREC, CONNACK, SUBACK, a
    /// delivery): nothing acknowledged is lost, even to a crash of the machine.
    Ack,
    /// Changes are written as they come and made durable every `autosave_interval`: a crash
    /// loses at most that much, as Mosquitto's snapshots do, for the throughput of no waiting.
    Interval,
}

/// Where log lines go (Mosquitto's `log_dest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDest {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGHUP.
    File(PathBuf),
    Syslog,
    /// Published on `$SYS/broker/log/<kind>`.
    Topic,
}

/// Mosquitto's `log_type` values, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogTypes(u8);

impl LogTypes {
    pub const ERROR: LogTypes = LogTypes(1);
    pub const WARNING: LogTypes = LogTypes(1 << 1);
    pub const NOTICE: LogTypes = LogTypes(1 << 2);
    pub const INFORMATION: LogTypes = LogTypes(1 << 3);
    pub const SUBSCRIBE: LogTypes = LogTypes(1 << 4);
    pub const UNSUBSCRIBE: LogTypes = LogTypes(1 << 5);
    pub const DEBUG: LogTypes = LogTypes(1 << 6);
    pub const NONE: LogTypes = LogTypes(0);

    /// Mosquitto's default: error, warning, notice and information.
    pub const DEFAULT: LogTypes = LogTypes(0b1111);

    pub const fn all() -> LogTypes {
        LogTypes(0x7f)
    }

    /// The set as bits, for an atomic.
    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn from_bits(bits: u8) -> LogTypes {
        LogTypes(bits & 0x7f)
    }

    pub fn contains(self, other: LogTypes) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersects(self, other: LogTypes) -> bool {
        self.0 & other.0 != 0
    }

    /// A `log_type` value; `websockets` is accepted: WebSocket events are logged with the
    /// connection events.
    fn named(name: &str) -> Option<LogTypes> {
        Some(match name {
            "error" => Self::ERROR,
            "warning" => Self::WARNING,
            "notice" => Self::NOTICE,
            "information" => Self::INFORMATION,
            "subscribe" => Self::SUBSCRIBE,
            "unsubscribe" => Self::UNSUBSCRIBE,
            "debug" => Self::DEBUG,
            "websockets" | "none" => Self::NONE,
            "all" => Self::all(),
            _ => return None,
        })
    }
}

impl std::ops::BitOr for LogTypes {
    type Output = LogTypes;
    fn bitor(self, other: LogTypes) -> LogTypes {
        LogTypes(self.0 | other.0)
    }
}

/// The logging options (applied by `crate::logging`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// Empty: no logging at all (`log_dest none`).
    pub destinations: Vec<LogDest>,
    pub types: LogTypes,
    /// Log clients connecting and disconnecting (`connection_messages`).
    pub connection_messages: bool,
    /// Prefix each line with the time (`log_timestamp`).
    pub timestamp: bool,
    /// strftime(3) format of that time (`log_timestamp_format`); default: seconds since the
    /// epoch, as Mosquitto writes them.
    pub timestamp_format: Option<String>,
    /// `log_facility`: syslog's LOCAL0 to LOCAL7; default: DAEMON.
    pub facility: Option<u8>,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            destinations: vec![LogDest::Stderr],
            types: LogTypes::DEFAULT,
            connection_messages: true,
            timestamp: true,
            timestamp_format: None,
            facility: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// True when no listener was configured: Mosquitto 2.0 then listens on loopback only and
    /// allows anonymous clients.
    pub local_only: bool,
    pub allow_anonymous: bool,
    /// Mosquitto's `password_file` and `acl_file` (read by `crate::auth`).
    pub password_file: Option<PathBuf>,
    pub acl_file: Option<PathBuf>,
    /// Where to write the process id (Mosquitto's `pid_file`), removed at exit.
    pub pid_file: Option<PathBuf>,
    /// Worker shards (one per core by default).
    pub shards: Option<usize>,
    pub max_inflight_messages: u16,
    pub max_queued_messages: usize,
    /// 0: no limit (Mosquitto's default).
    pub max_queued_bytes: usize,
    pub queue_qos0_messages: bool,
    pub max_packet_size: u32,
    /// The longest keep alive a 5.0 client is granted, and what one that asks for none (0) is
    /// told: 65,535 s by default, as Mosquitto; 0: no cap.
    pub max_keepalive: u16,
    pub allow_zero_length_clientid: bool,
    pub auto_id_prefix: String,
    /// `per_listener_settings true`: each listener has its own access settings (`security`).
    pub per_listener_settings: bool,
    pub retain_available: bool,
    /// Mosquitto's `persistence`: sessions, their messages and retained messages survive a
    /// restart, written before they are acknowledged (`crate::store`).
    pub persistence: bool,
    /// Where the store files go (`persistence_location`; default: the working directory).
    pub persistence_location: PathBuf,
    /// When a change is durable (Culex's `persistence_sync`): before it is acknowledged
    /// (`ack`, the default), or within `autosave_interval` (`interval`).
    pub persistence_sync: PersistenceSync,
    /// Mosquitto's `autosave_interval`: with `persistence_sync interval`, the longest a change
    /// waits to be made durable (0 is taken as 1 s).
    pub autosave_interval: std::time::Duration,
    /// The store files' name (`persistence_file`): each shard writes `NAME.shardN`, so that a
    /// Mosquitto database of the same name is never overwritten.
    pub persistence_file: String,
    /// Sessions that never expire (3.x clean session 0, 5.0 0xFFFFFFFF) end after this long
    /// offline (Mosquitto's `persistent_client_expiration`; `None`: never).
    pub persistent_client_expiration: Option<std::time::Duration>,
    /// Only client ids starting with this may connect (Mosquitto's `clientid_prefixes`).
    pub clientid_prefixes: Option<String>,
    /// The username replaces the client id (Mosquitto's `use_username_as_clientid`).
    pub use_username_as_clientid: bool,
    /// Deliver at the subscription's QoS, not the lower of it and the publisher's (Mosquitto's
    /// `upgrade_outgoing_qos`).
    pub upgrade_outgoing_qos: bool,
    /// A retained message goes to a new subscriber only while its publisher may still write
    /// its topic (Mosquitto's `check_retain_source`; it matters with an ACL). Off by default:
    /// Mosquitto 2.0.11 checks only when the line says `true`, whatever its manual says
    /// (`tests/acl.rs` runs both).
    pub check_retain_source: bool,
    /// The largest PUBLISH payload accepted (Mosquitto's `message_size_limit`; 0: no limit).
    pub message_size_limit: usize,
    /// The highest QoS clients may publish or be granted (Mosquitto's `max_qos`, 0 to 2).
    pub max_qos: crate::protocol::QoS,
    /// Seconds between `$SYS` updates (Mosquitto's `sys_interval`; 0: no `$SYS` tree).
    pub sys_interval: u32,
    pub logging: Logging,
    /// Mosquitto's `memory_limit` in bytes of heap (`None`: no limit). Above it, new clients
    /// and new messages are refused.
    pub memory_limit: Option<u64>,
    /// Started as root, continue as this user once sockets and files are open (Mosquitto's
    /// `user`). Mosquitto's default is `mosquitto`; Culex changes user only when told, since
    /// its service already starts as `culex`.
    pub user: Option<String>,
    /// TCP_NODELAY on client sockets (Mosquitto's `set_tcp_nodelay`). Culex's default is
    /// `true`, where Mosquitto's is `false`: Culex gathers each turn's packets into one write
    /// itself, so Nagle's algorithm only adds delay.
    pub tcp_nodelay: bool,
    /// One per `connection` block, in file order.
    pub bridges: Vec<Bridge>,
    /// Shards that run the bridges, beside the worker shards (Culex's own option).
    pub bridge_shards: usize,
    /// Culex's `metrics_listener PORT [ADDRESS]`: Prometheus's `/metrics` there (loopback when
    /// no address is given; `None`: off).
    pub metrics_listener: Option<SocketAddr>,
    /// Culex's `reason_strings`: 5.0 refusals (CONNACK, DISCONNECT, PUBACK, PUBREC) carry a
    /// Reason String. Off by default: Mosquitto 2.0 sends none.
    pub reason_strings: bool,
    /// Culex's `max_subscriptions_per_client`: filters one session may hold (0: no limit, as
    /// Mosquitto has none). A SUBSCRIBE past it is refused filter by filter.
    pub max_subscriptions_per_client: usize,
    /// `websockets_headers_size`: the most bytes a WebSocket listener reads of a request head.
    pub websockets_headers_size: usize,
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![Listener::new(DEFAULT_PORT, Vec::new())],
            local_only: true,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            pid_file: None,
            shards: None,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_qos0_messages: false,
            max_packet_size: crate::protocol::PACKET_SIZE_MAX,
            max_keepalive: u16::MAX,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_string(),
            per_listener_settings: false,
            retain_available: true,
            max_qos: crate::protocol::QoS::ExactlyOnce,
            persistence: false,
            persistent_client_expiration: None,
            message_size_limit: 0,
            clientid_prefixes: None,
            use_username_as_clientid: false,
            upgrade_outgoing_qos: false,
            check_retain_source: false,
            persistence_sync: PersistenceSync::Ack,
            autosave_interval: std::time::Duration::from_secs(1800),
            persistence_location: PathBuf::new(),
            persistence_file: "mosquitto.db".to_string(),
            sys_interval: 10,
            logging: Logging::default(),
            tcp_nodelay: true,
            user: None,
            memory_limit: None,
            bridges: Vec::new(),
            bridge_shards: 1,
            metrics_listener: None,
            reason_strings: false,
            max_subscriptions_per_client: 0,
            websockets_headers_size: crate::websocket::HEADERS_SIZE_DEFAULT,
            verbose: false,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("{file}:{line}: unknown option `{option}`")]
    UnknownOption { file: PathBuf, line: usize, option: String },
    #[error("{file}:{line}: invalid value for `{option}`: {reason}")]
    InvalidValue { file: PathBuf, line: usize, option: String, reason: String },
    /// An option Culex recognises but refuses to start with, because ignoring it would be
    /// unsafe (a TLS option ignored would serve or dial in plaintext).
    #[error("{file}:{line}: option `{option}` {reason}")]
    Refused { file: PathBuf, line: usize, option: String, reason: String },
}

/// How the parser takes one option. `handling` names every option Culex knows, once: whether an
/// option is known, applied, warned about or refused all follows from it.
enum Handling {
    /// Applied: sets what the line says.
    Apply(fn(&mut Parser, &Line) -> Result<(), ConfigError>),
    /// Belongs to the most recent `connection` (`bridge::setter`).
    Bridge(bridge::Setter),
    /// Recognised, not applied yet: a warning names file and line, never silence.
    Warn,
    /// Recognised and refused, because ignoring it would be unsafe: this says why.
    Refuse(&'static str),
}

/// TLS that Culex's TLS library (rustls) cannot give: a listener or bridge given any of these
/// must never run without it.
const TLS_PSK: &str = "asks for TLS with pre-shared keys, which Culex's TLS library (rustls) does \
                       not support: refusing to start, since the listener would not be secured \
                       as configured (use certificates: certfile and keyfile)";
const TLS_ENGINE: &str = "asks for an OpenSSL engine, which Culex's TLS library (rustls) cannot \
                          load: refusing to start (use a PEM key file: keyfile)";
const PLUGIN: &str = "loads an authentication plugin (or configures one), which Culex cannot \
                      run: refusing to start, since without it clients would not be checked as \
                      the plugin checks them";

/// Whether `option` is a mosquitto.conf option Culex recognises (applied, warned about, refused
/// or a bridge option).
pub fn is_known_option(option: &str) -> bool {
    handling(option).is_some()
}

/// The table of options: every name Culex recognises, and how it takes it.
fn handling(option: &str) -> Option<Handling> {
    use Handling::{Apply, Refuse, Warn};
    if let Some(setter) = bridge::setter(option) {
        return Some(Handling::Bridge(setter));
    }
    // Option families recognised by prefix (`auth_opt_NAME`, `plugin_opt_NAME`): a plugin's.
    if ["auth_opt_", "plugin_opt_"].iter().any(|prefix| option.starts_with(prefix)) {
        return Some(Refuse(PLUGIN));
    }
    Some(match option {
        "listener" => Apply(|p, l| {
            let mut parts = l.value.split_whitespace();
            let port = parse_port(parts.next().unwrap_or(""), l)?;
            // Mosquitto: an address with a `/` is a Unix socket's path, with port 0.
            let listener = match parts.next() {
                Some(path) if path.contains('/') => {
                    if port != 0 {
                        return Err(l.invalid("a Unix socket listener takes port 0"));
                    }
                    let mut listener = Listener::new(0, Vec::new());
                    listener.unix_path = Some(PathBuf::from(path));
                    listener
                }
                Some(host) => Listener::new(port, parse_host(host, port, l)?),
                None => Listener::new(port, Vec::new()),
            };
            p.explicit_listeners.push(listener);
            Ok(())
        }),
        // Mosquitto's older form: the address of the default listener (as `port` is its port).
        "bind_address" => Apply(|p, l| {
            let port = *p.default_port.get_or_insert(DEFAULT_PORT);
            let addresses = parse_host(l.value, port, l)?;
            p.default_listener.get_or_insert_with(|| Listener::new(port, Vec::new())).bind_address =
                addresses;
            Ok(())
        }),
        "max_topic_alias" => Apply(|p, l| {
            p.current_listener().max_topic_alias = parse_number(l)?;
            Ok(())
        }),
        "max_topic_alias_broker" => Apply(|p, l| {
            p.current_listener().max_topic_alias_broker = parse_number(l)?;
            Ok(())
        }),
        "port" => Apply(|p, l| {
            p.default_port = Some(parse_port(l.value, l)?);
            Ok(())
        }),
        // With `per_listener_settings true`, these five belong to the current listener.
        "allow_anonymous" => Apply(|p, l| {
            let allow = parse_bool(l)?;
            if p.config.per_listener_settings {
                p.current_listener().security.allow_anonymous = Some(allow);
            } else {
                p.config.allow_anonymous = allow;
                p.anonymous_set = true;
            }
            Ok(())
        }),
        "password_file" => Apply(|p, l| {
            let path = Some(parse_path(l)?);
            match p.config.per_listener_settings {
                true => p.current_listener().security.password_file = path,
                false => p.config.password_file = path,
            }
            Ok(())
        }),
        "acl_file" => Apply(|p, l| {
            let path = Some(parse_path(l)?);
            match p.config.per_listener_settings {
                true => p.current_listener().security.acl_file = path,
                false => p.config.acl_file = path,
            }
            Ok(())
        }),
        "allow_zero_length_clientid" => Apply(|p, l| {
            let allow = parse_bool(l)?;
            match p.config.per_listener_settings {
                true => p.current_listener().security.allow_zero_length_clientid = Some(allow),
                false => p.config.allow_zero_length_clientid = allow,
            }
            Ok(())
        }),
        "auto_id_prefix" => Apply(|p, l| {
            let prefix = l.value.to_string();
            match p.config.per_listener_settings {
                true => p.current_listener().security.auto_id_prefix = Some(prefix),
                false => p.config.auto_id_prefix = prefix,
            }
            Ok(())
        }),
        "pid_file" => Apply(|p, l| {
            p.config.pid_file = Some(parse_path(l)?);
            Ok(())
        }),
        "shards" => Apply(|p, l| {
            let shards: usize = parse_number(l)?;
            if shards == 0 {
                return Err(l.invalid("must be at least 1"));
            }
            p.config.shards = Some(shards);
            Ok(())
        }),
        "max_inflight_messages" => Apply(|p, l| {
            p.config.max_inflight_messages = parse_number(l)?;
            Ok(())
        }),
        "max_queued_messages" => Apply(|p, l| {
            p.config.max_queued_messages = parse_number(l)?;
            Ok(())
        }),
        "max_queued_bytes" => Apply(|p, l| {
            p.config.max_queued_bytes = parse_number(l)?;
            Ok(())
        }),
        "queue_qos0_messages" => Apply(|p, l| {
            p.config.queue_qos0_messages = parse_bool(l)?;
            Ok(())
        }),
        "max_packet_size" => Apply(|p, l| {
            // Mosquitto: 0 means no limit; a limit below 20 bytes cannot carry CONNECT.
            p.config.max_packet_size = match parse_number::<u32>(l)? {
                0 => crate::protocol::PACKET_SIZE_MAX,
                1..=19 => return Err(l.invalid("must be 0 or at least 20")),
                size => size,
            };
            Ok(())
        }),
        "max_keepalive" => Apply(|p, l| {
            p.config.max_keepalive = parse_number(l)?;
            Ok(())
        }),
        "sys_interval" => Apply(|p, l| {
            p.config.sys_interval = parse_number(l)?;
            Ok(())
        }),
        "memory_limit" => Apply(|p, l| {
            let bytes: u64 = parse_number(l)?;
            p.config.memory_limit = (bytes > 0).then_some(bytes);
            Ok(())
        }),
        "user" => Apply(|p, l| {
            if l.value.is_empty() {
                return Err(l.invalid("expected a user name"));
            }
            p.config.user = Some(l.value.to_string());
            Ok(())
        }),
        // From here on, the security options above belong to the current listener.
        "per_listener_settings" => Apply(|p, l| {
            p.config.per_listener_settings = parse_bool(l)?;
            Ok(())
        }),
        "mount_point" => Apply(|p, l| {
            let topic = crate::protocol::TopicName::new(l.value.to_string());
            if l.value.contains(['+', '#']) || topic.is_err() {
                return Err(l.invalid("expected a topic prefix without wildcards"));
            }
            p.current_listener().mount_point = Some(l.value.to_string());
            Ok(())
        }),
        "set_tcp_nodelay" => Apply(|p, l| {
            p.config.tcp_nodelay = parse_bool(l)?;
            Ok(())
        }),
        "socket_domain" => Apply(|p, l| {
            p.current_listener().socket_domain = Some(match l.value {
                "ipv4" => SocketDomain::Ipv4,
                "ipv6" => SocketDomain::Ipv6,
                _ => return Err(l.invalid("expected `ipv4` or `ipv6`")),
            });
            Ok(())
        }),
        "bind_interface" => Apply(|p, l| {
            if l.value.is_empty() {
                return Err(l.invalid("expected a network interface name"));
            }
            p.current_listener().bind_interface = Some(l.value.to_string());
            Ok(())
        }),
        "max_connections" => Apply(|p, l| {
            let count: i64 = parse_number(l)?;
            p.current_listener().max_connections = match count {
                -1 => None,
                0.. => Some(usize::try_from(count).unwrap_or(usize::MAX)),
                _ => return Err(l.invalid("must be -1 (no limit) or a count")),
            };
            Ok(())
        }),
        "max_connection_rate" => Apply(|p, l| {
            p.current_listener().max_connection_rate = parse_number(l)?;
            Ok(())
        }),
        "protocol" => Apply(|p, l| {
            match l.value {
                "mqtt" => p.current_listener().websockets = false,
                "websockets" => p.current_listener().websockets = true,
                _ => return Err(l.invalid("expected `mqtt` or `websockets`")),
            }
            Ok(())
        }),
        "log_dest" => Apply(|p, l| {
            let value = l.value;
            let destination = match value.split_once(char::is_whitespace) {
                Some(("file", path)) => LogDest::File(PathBuf::from(path.trim())),
                None if value == "file" => return Err(l.invalid("`file` needs a path")),
                None if value == "stdout" => LogDest::Stdout,
                None if value == "stderr" => LogDest::Stderr,
                None if value == "syslog" => LogDest::Syslog,
                None if value == "topic" => LogDest::Topic,
                None if value == "none" => {
                    p.log_dest_set = true;
                    p.config.logging.destinations.clear();
                    return Ok(());
                }
                None if value == "dlt" => {
                    return Err(l.invalid("`dlt` is not supported: use stderr, file or syslog"))
                }
                _ => {
                    return Err(
                        l.invalid("expected stdout, stderr, file PATH, syslog, topic or none")
                    )
                }
            };
            // The first `log_dest` replaces the default; later ones add to it.
            let destinations = &mut p.config.logging.destinations;
            if !std::mem::replace(&mut p.log_dest_set, true) {
                destinations.clear();
            }
            if !destinations.contains(&destination) {
                destinations.push(destination);
            }
            Ok(())
        }),
        "log_type" => Apply(|p, l| {
            let types = LogTypes::named(l.value).ok_or_else(|| {
                l.invalid(
                    "expected error, warning, notice, information, subscribe, unsubscribe, \
                     websockets, debug, all or none",
                )
            })?;
            // The first `log_type` replaces the default; later ones add to it.
            if !std::mem::replace(&mut p.log_type_set, true) {
                p.config.logging.types = LogTypes::NONE;
            }
            p.config.logging.types = p.config.logging.types | types;
            Ok(())
        }),
        "connection_messages" => Apply(|p, l| {
            p.config.logging.connection_messages = parse_bool(l)?;
            Ok(())
        }),
        "log_timestamp" => Apply(|p, l| {
            p.config.logging.timestamp = parse_bool(l)?;
            Ok(())
        }),
        "log_timestamp_format" => Apply(|p, l| {
            if l.value.is_empty() {
                return Err(l.invalid("expected a strftime format"));
            }
            p.config.logging.timestamp_format = Some(l.value.to_string());
            Ok(())
        }),
        "log_facility" => Apply(|p, l| {
            let facility: u8 = parse_number(l)?;
            if facility > 7 {
                return Err(l.invalid("must be 0 to 7 (LOCAL0 to LOCAL7)"));
            }
            p.config.logging.facility = Some(facility);
            Ok(())
        }),
        "retain_available" => Apply(|p, l| {
            p.config.retain_available = parse_bool(l)?;
            Ok(())
        }),
        "clientid_prefixes" => Apply(|p, l| {
            p.config.clientid_prefixes = Some(l.value.to_string());
            Ok(())
        }),
        "use_username_as_clientid" => Apply(|p, l| {
            p.config.use_username_as_clientid = parse_bool(l)?;
            Ok(())
        }),
        "upgrade_outgoing_qos" => Apply(|p, l| {
            p.config.upgrade_outgoing_qos = parse_bool(l)?;
            Ok(())
        }),
        "check_retain_source" => Apply(|p, l| {
            p.config.check_retain_source = parse_bool(l)?;
            Ok(())
        }),
        "message_size_limit" => Apply(|p, l| {
            p.config.message_size_limit = parse_number(l)?;
            // The largest remaining length MQTT can express.
            if p.config.message_size_limit > 268_435_455 {
                return Err(l.invalid("must be at most 268435455"));
            }
            Ok(())
        }),
        "persistence" => Apply(|p, l| {
            p.config.persistence = parse_bool(l)?;
            Ok(())
        }),
        "persistence_location" => Apply(|p, l| {
            p.config.persistence_location = PathBuf::from(l.value);
            Ok(())
        }),
        "persistence_file" => Apply(|p, l| {
            if l.value.is_empty() || l.value.contains('/') {
                return Err(l.invalid("expected a file name"));
            }
            p.config.persistence_file = l.value.to_string();
            Ok(())
        }),
        "persistent_client_expiration" => Apply(|p, l| {
            p.config.persistent_client_expiration = Some(parse_expiration(l)?);
            Ok(())
        }),
        "persistence_sync" => Apply(|p, l| {
            p.config.persistence_sync = match l.value {
                "ack" => PersistenceSync::Ack,
                "interval" => PersistenceSync::Interval,
                _ => return Err(l.invalid("expected `ack` or `interval`")),
            };
            Ok(())
        }),
        "autosave_interval" => Apply(|p, l| {
            let secs: u64 = parse_number(l)?;
            p.config.autosave_interval = std::time::Duration::from_secs(secs.max(1));
            Ok(())
        }),
        "autosave_on_changes" => Apply(|p, l| {
            parse_bool(l)?;
            p.warnings.push(l.warning(&format!(
                "option `{}` has no effect: Culex writes every change as it comes (see \
                 `persistence_sync`)",
                l.option
            )));
            Ok(())
        }),
        // Mosquitto 2.0.11 accepts both spellings.
        "max_qos" | "maximum_qos" => Apply(|p, l| {
            let level: u8 = parse_number(l)?;
            p.config.max_qos =
                crate::protocol::QoS::from_u8(level).map_err(|_| l.invalid("must be 0, 1 or 2"))?;
            Ok(())
        }),
        "include_dir" => Apply(|p, l| p.include_dir(l)),
        "metrics_listener" => Apply(|p, l| {
            let mut parts = l.value.split_whitespace();
            let port = parse_port(parts.next().unwrap_or(""), l)?;
            let ip = match parts.next() {
                Some(host) => *parse_host(host, port, l)?.first().unwrap_or(&Ipv4Addr::LOCALHOST.into()),
                None => Ipv4Addr::LOCALHOST.into(),
            };
            p.config.metrics_listener = Some(SocketAddr::new(ip, port));
            Ok(())
        }),
        "reason_strings" => Apply(|p, l| {
            p.config.reason_strings = parse_bool(l)?;
            Ok(())
        }),
        "max_subscriptions_per_client" => Apply(|p, l| {
            p.config.max_subscriptions_per_client = parse_number(l)?;
            Ok(())
        }),
        "bridge_shards" => Apply(|p, l| {
            p.config.bridge_shards = parse_number(l)?;
            if p.config.bridge_shards == 0 {
                return Err(l.invalid("must be at least 1"));
            }
            Ok(())
        }),
        "connection" => Apply(|p, l| {
            if l.value.is_empty() {
                return Err(l.invalid("a connection needs a name"));
            }
            if p.config.bridges.iter().any(|b| b.name == l.value) {
                return Err(l.invalid("a connection of this name already exists"));
            }
            p.config.bridges.push(Bridge::new(l.value, l.file, l.number));
            Ok(())
        }),
        "allow_duplicate_messages"
        | "auth_plugin_deny_special_chars"
        | "auto_id_prefix_listener"
        | "enable_control_api"
        | "max_inflight_bytes"
        // Mosquitto 2.1's new options: recognised, so that a host's 2.1 file starts Culex.
        | "bridge_max_topic_alias"
        | "bridge_reload_type"
        | "disable_client_cert_date_checks"
        | "global_max_clients"
        | "global_max_connections"
        | "listener_auto_id_prefix"
        | "packet_buffer_size"
        | "retain_expiry_interval" => Warn,
        "accept_protocol_versions" => Apply(|p, l| {
            let mut levels = Vec::new();
            for level in l.value.split(',').map(str::trim) {
                match level.parse::<u8>() {
                    Ok(level @ 3..=5) if !levels.contains(&level) => levels.push(level),
                    _ => return Err(l.invalid("expected protocol levels 3, 4 and 5, e.g. `4, 5`")),
                }
            }
            p.current_listener().protocol_levels = Some(levels);
            Ok(())
        }),
        "http_dir" => Apply(|p, l| {
            p.current_listener().http_dir = Some(parse_path(l)?);
            Ok(())
        }),
        "websockets_origin" => Apply(|p, l| {
            if l.value.is_empty() {
                return Err(l.invalid("expected an origin (scheme://host[:port])"));
            }
            p.current_listener().websockets_origins.push(l.value.to_string());
            Ok(())
        }),
        "websockets_headers_size" => Apply(|p, l| {
            p.config.websockets_headers_size = match parse_number::<usize>(l)? {
                0 => crate::websocket::HEADERS_SIZE_DEFAULT,
                size => size,
            };
            Ok(())
        }),
        // libwebsockets' log mask: Culex's WebSocket events are logged as its others are.
        "websockets_log_level" => Apply(|_, l| parse_number::<u32>(l).map(|_| ())),
        // Security options are never only a warning: ignored, they would let in whom they keep
        // out.
        "auth_plugin" | "plugin" | "global_plugin" | "plugin_load" | "plugin_use" => Refuse(PLUGIN),
        "listener_allow_anonymous" => Refuse(
            "is Mosquitto 2.1's per-listener allow_anonymous, which Culex does not read yet: \
             refusing to start rather than decide anonymous access without it (write \
             `per_listener_settings true` and `allow_anonymous` after the `listener` line)",
        ),
        "enable_proxy_protocol" => Apply(|p, l| {
            p.current_listener().proxy_protocol = Some(match l.value {
                "1" => crate::proxy::Version::V1,
                "2" => crate::proxy::Version::V2,
                _ => return Err(l.invalid("expected 1 or 2")),
            });
            Ok(())
        }),
        "proxy_protocol_v2_require_tls" => Apply(|p, l| {
            let listener = p.current_listener();
            listener.proxy_require_tls = parse_bool(l)?;
            listener.checked_lines.push(OptionAt::of(l));
            Ok(())
        }),
        // A listener's TLS (`crate::tls`): a line that asks for TLS makes its listener a TLS
        // one, and `Listener::check_tls` refuses one that cannot serve it.
        "certfile" => Apply(|p, l| {
            p.current_listener().tls_asked(l).certfile = Some(parse_path(l)?);
            Ok(())
        }),
        "keyfile" => Apply(|p, l| {
            p.current_listener().tls_asked(l).keyfile = Some(parse_path(l)?);
            Ok(())
        }),
        "cafile" => Apply(|p, l| {
            p.current_listener().tls_asked(l).cafile = Some(parse_path(l)?);
            Ok(())
        }),
        "capath" => Apply(|p, l| {
            p.current_listener().tls_asked(l).capath = Some(parse_path(l)?);
            Ok(())
        }),
        "crlfile" => Apply(|p, l| {
            p.current_listener().tls_asked(l).crlfile = Some(parse_path(l)?);
            Ok(())
        }),
        "require_certificate" => Apply(|p, l| {
            let listener = p.current_listener();
            match parse_bool(l)? {
                true => listener.tls_asked(l).require_certificate = true,
                false => listener.tls.iter_mut().for_each(|tls| tls.require_certificate = false),
            }
            Ok(())
        }),
        "use_identity_as_username" | "use_subject_as_username" => Apply(|p, l| {
            let name = match l.option {
                "use_identity_as_username" => crate::tls::CertificateName::CommonName,
                _ => crate::tls::CertificateName::Subject,
            };
            let listener = p.current_listener();
            match parse_bool(l)? {
                true => listener.tls_asked(l).username_from_certificate = Some(name),
                false => listener
                    .tls
                    .iter_mut()
                    .filter(|tls| tls.username_from_certificate == Some(name))
                    .for_each(|tls| tls.username_from_certificate = None),
            }
            Ok(())
        }),
        "tls_version" => Apply(|p, l| {
            let version = crate::tls::TlsVersion::parse(l.value).map_err(|r| l.invalid(&r))?;
            p.current_listener().tls_asked(l).min_version = version;
            Ok(())
        }),
        "ciphers" | "ciphers_tls1.3" => Apply(|p, l| {
            let tls13 = l.option == "ciphers_tls1.3";
            let suites = crate::tls::parse_ciphers(l.value, tls13).map_err(|r| l.invalid(&r))?;
            let tls = p.current_listener().tls_asked(l);
            match tls13 {
                true => tls.ciphers_tls13 = Some(suites),
                false => tls.ciphers_tls12 = Some(suites),
            }
            Ok(())
        }),
        "tls_keyform" => Apply(|_, l| match l.value {
            "pem" => Ok(()),
            "engine" => Err(l.refused(TLS_ENGINE)),
            _ => Err(l.invalid("expected `pem` or `engine`")),
        }),
        "tls_engine" | "tls_engine_kpass_sha1" => Refuse(TLS_ENGINE),
        "dhparamfile" => Apply(|p, l| {
            parse_path(l)?;
            p.warnings.push(l.warning(
                "option `dhparamfile` has no effect: Culex's TLS (rustls) offers ECDHE key \
                 exchange only, which needs no DH parameters",
            ));
            Ok(())
        }),
        "psk_file" | "psk_hint" => Refuse(TLS_PSK),
        "ocsp_stapling" => Refuse(
            "asks for OCSP stapling, which Culex's TLS does not implement: refusing to start, \
             since clients that require a stapled response would be refused",
        ),
        "bridge_identity" | "bridge_psk" => Refuse(
            "asks for TLS with pre-shared keys, which Culex's TLS library (rustls) does not \
             support: refusing to start, since the bridge would not dial its peer as configured \
             (use certificates: bridge_cafile, bridge_certfile, bridge_keyfile)",
        ),
        _ => return None,
    })
}

/// One line of a configuration file: the option it names and where it stands, for errors and
/// warnings that name file and line.
struct Line<'a> {
    file: &'a Path,
    number: usize,
    option: &'a str,
    value: &'a str,
    /// How deep in `include_dir`s the file is.
    depth: usize,
}

impl Line<'_> {
    fn invalid(&self, reason: &str) -> ConfigError {
        ConfigError::InvalidValue {
            file: self.file.to_path_buf(),
            line: self.number,
            option: self.option.to_string(),
            reason: reason.to_string(),
        }
    }

    fn refused(&self, reason: &str) -> ConfigError {
        ConfigError::Refused {
            file: self.file.to_path_buf(),
            line: self.number,
            option: self.option.to_string(),
            reason: reason.to_string(),
        }
    }

    fn warning(&self, what: &str) -> String {
        format!("{}:{}: {what}", self.file.display(), self.number)
    }
}

/// The port of a default listener given only an address (`bind_address`), and of the one
/// without configuration.
const DEFAULT_PORT: u16 = 1883;

/// Topic aliases a 5.0 client may set per connection unless `max_topic_alias` says otherwise,
/// and that the broker sets toward one unless `max_topic_alias_broker` does (Mosquitto's
/// defaults, 2.1's for the second).
pub const MAX_TOPIC_ALIAS_DEFAULT: u16 = 10;

/// `include_dir` may nest this deep (a directory including itself must not loop).
const INCLUDE_DEPTH_MAX: usize = 8;

impl Config {
    /// The store file of shard `shard` (with `persistence true`).
    pub fn store_path(&self, shard: usize) -> PathBuf {
        self.persistence_location.join(format!("{}.shard{shard}", self.persistence_file))
    }

    /// What `crate::auth` needs to know of every listener, without `per_listener_settings
    /// true`.
    pub fn auth(&self) -> crate::auth::AuthConfig {
        crate::auth::AuthConfig {
            password_file: self.password_file.clone(),
            acl_file: self.acl_file.clone(),
            allow_anonymous: self.allow_anonymous,
            allow_zero_length_clientid: self.allow_zero_length_clientid,
            auto_id_prefix: self.auto_id_prefix.clone(),
        }
    }

    /// The access settings of `listener`: its own with `per_listener_settings true` (the
    /// default listener of a configuration without listeners admits anonymous clients, as
    /// Mosquitto 2.0's), else everyone's.
    pub fn auth_for(&self, listener: &Listener) -> crate::auth::AuthConfig {
        if !self.per_listener_settings {
            return self.auth();
        }
        let own = &listener.security;
        let defaults = crate::auth::AuthConfig::default();
        crate::auth::AuthConfig {
            password_file: own.password_file.clone(),
            acl_file: own.acl_file.clone(),
            allow_anonymous: own.allow_anonymous.unwrap_or(self.local_only),
            allow_zero_length_clientid: own
                .allow_zero_length_clientid
                .unwrap_or(defaults.allow_zero_length_clientid),
            auto_id_prefix: own.auto_id_prefix.clone().unwrap_or(defaults.auto_id_prefix),
        }
    }

    /// Whether any ACL file is configured: deliveries are checked against one only then.
    pub fn has_acl_file(&self) -> bool {
        self.acl_file.is_some() || self.listeners.iter().any(|l| l.security.acl_file.is_some())
    }

    /// Parses a mosquitto.conf file (and the files it includes).
    pub fn from_file(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let mut parser = Parser::default();
        parser.file(path, 0)?;
        parser.finish()
    }

    /// Parses configuration text; `file` names it in errors. Returns warnings beside the config.
    pub fn parse(text: &str, file: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let mut parser = Parser::default();
        parser.text(text, file, 0)?;
        parser.finish()
    }
}

/// What is known while reading: the options so far, and which block (`listener`,
/// `connection`) later lines belong to.
#[derive(Default)]
struct Parser {
    config: Config,
    warnings: Vec<String>,
    explicit_listeners: Vec<Listener>,
    default_port: Option<u16>,
    /// The options given before any `listener` line belong to the default listener.
    default_listener: Option<Listener>,
    anonymous_set: bool,
    log_dest_set: bool,
    log_type_set: bool,
}

impl Parser {
    fn file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            file: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.text(&text, path, depth)
    }

    fn text(&mut self, text: &str, file: &Path, depth: usize) -> Result<(), ConfigError> {
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (option, value) = match trimmed.split_once(char::is_whitespace) {
                Some((option, value)) => (option, value.trim()),
                None => (trimmed, ""),
            };
            self.option(&Line { file, number: index + 1, option, value, depth })?;
        }
        Ok(())
    }

    fn option(&mut self, line: &Line) -> Result<(), ConfigError> {
        match handling(line.option) {
            Some(Handling::Apply(apply)) => apply(self, line),
            Some(Handling::Bridge(set)) => {
                let Some(bridge) = self.config.bridges.last_mut() else {
                    return Err(
                        line.invalid("invalid bridge configuration: no `connection` before it")
                    );
                };
                set(bridge, line.value).map_err(|reason| line.invalid(&reason))
            }
            Some(Handling::Warn) => {
                let what =
                    format!("option `{}` is not implemented yet and is ignored", line.option);
                self.warnings.push(line.warning(&what));
                Ok(())
            }
            Some(Handling::Refuse(reason)) => Err(line.refused(reason)),
            None => Err(ConfigError::UnknownOption {
                file: line.file.to_path_buf(),
                line: line.number,
                option: line.option.to_string(),
            }),
        }
    }

    /// The listener that listener options apply to: the last `listener`, or before any, the
    /// default one.
    fn current_listener(&mut self) -> &mut Listener {
        match self.explicit_listeners.last_mut() {
            Some(listener) => listener,
            None => {
                self.default_listener.get_or_insert_with(|| Listener::new(DEFAULT_PORT, Vec::new()))
            }
        }
    }

    /// `include_dir DIR`: every `DIR/*.conf`, in alphabetical order, as if written here.
    fn include_dir(&mut self, line: &Line) -> Result<(), ConfigError> {
        if line.depth >= INCLUDE_DEPTH_MAX {
            return Err(line.invalid("include_dir nested too deep (a directory including itself?)"));
        }
        let entries = std::fs::read_dir(line.value).map_err(|e| line.invalid(&e.to_string()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "conf") && path.is_file())
            .collect();
        files.sort();
        tracing::debug!(
            file = %line.file.display(),
            line = line.number,
            dir = line.value,
            included = files.len(),
            "include_dir"
        );
        for path in files {
            self.file(&path, line.depth + 1)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(Config, Vec<String>), ConfigError> {
        let config = &mut self.config;
        for bridge in &config.bridges {
            bridge.check_complete().map_err(|reason| {
                let (file, line) = bridge.declared_at.clone();
                ConfigError::InvalidValue { file, line, option: "connection".into(), reason }
            })?;
        }
        let mut listeners = self.default_listener.iter().chain(&self.explicit_listeners);
        listeners.try_for_each(Listener::check)?;
        config.local_only = self.explicit_listeners.is_empty() && self.default_port.is_none();
        if config.local_only {
            if let Some(default) = self.default_listener.take() {
                config.listeners = vec![default];
            }
        } else {
            // Mosquitto 2.0: once a listener is configured, anonymous access must be granted.
            if !self.anonymous_set {
                config.allow_anonymous = false;
            }
            let mut listeners = Vec::new();
            if let Some(port) = self.default_port {
                let default =
                    self.default_listener.take().unwrap_or_else(|| Listener::new(port, Vec::new()));
                listeners.push(Listener { port, ..default });
            }
            listeners.extend(self.explicit_listeners);
            config.listeners = listeners;
        }
        Ok((self.config, self.warnings))
    }
}

/// Mosquitto's expiration periods: a number and h, d, w, m or y (hours, days, weeks, months
/// of 30 days, years of 365 days).
fn parse_expiration(line: &Line) -> Result<std::time::Duration, ConfigError> {
    let value = line.value;
    let expected = || line.invalid("expected a number followed by s, h, d, w, m or y (e.g. 2d)");
    let unit = value.chars().last().ok_or_else(expected)?;
    // Seconds (`s`) are Mosquitto 2.1's.
    let seconds: u64 = match unit {
        's' => 1,
        'h' => 3600,
        'd' => 3600 * 24,
        'w' => 3600 * 24 * 7,
        'm' => 3600 * 24 * 30,
        'y' => 3600 * 24 * 365,
        _ => return Err(expected()),
    };
    let count: u64 = value[..value.len() - 1].parse().map_err(|_| expected())?;
    if count == 0 {
        return Err(expected());
    }
    Ok(std::time::Duration::from_secs(count.saturating_mul(seconds)))
}

/// A listener's address: an IP address, or a host name resolved now to every address it has
/// (as Mosquitto binds each address `getaddrinfo` gives).
fn parse_host(host: &str, port: u16, line: &Line) -> Result<Vec<IpAddr>, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| line.invalid(&format!("cannot resolve host name `{host}`: {e}")))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in resolved {
        if !addresses.contains(&address.ip()) {
            addresses.push(address.ip());
        }
    }
    if addresses.is_empty() {
        return Err(line.invalid(&format!("host name `{host}` has no address")));
    }
    Ok(addresses)
}

/// A port: the whole value, or (for `listener`) its first word.
fn parse_port(text: &str, line: &Line) -> Result<u16, ConfigError> {
    text.parse::<u16>().map_err(|_| line.invalid("not a port number (0-65535)"))
}

fn parse_bool(line: &Line) -> Result<bool, ConfigError> {
    bool_value(line.value).ok_or_else(|| line.invalid(BOOL_EXPECTED))
}

const BOOL_EXPECTED: &str = "expected `true` or `false`";

/// A boolean as Mosquitto reads one: `true` or `false`, and also `1` or `0`.
fn bool_value(value: &str) -> Option<bool> {
    match value {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_number<T: std::str::FromStr>(line: &Line) -> Result<T, ConfigError> {
    line.value.parse::<T>().map_err(|_| line.invalid("not a number in the allowed range"))
}

fn parse_path(line: &Line) -> Result<PathBuf, ConfigError> {
    if line.value.is_empty() {
        return Err(line.invalid("expected the path of a file"));
    }
    Ok(PathBuf::from(line.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.conf")).map(|(config, _)| config)
    }

    #[test]
    fn no_listener_means_loopback_and_anonymous() {
        let config = parse("# nothing\n").unwrap();
        assert!(config.local_only && config.allow_anonymous);
        assert_eq!(config.listeners, vec![Listener::new(DEFAULT_PORT, Vec::new())]);
    }

    #[test]
    fn a_listener_denies_anonymous_unless_allowed() {
        let config = parse("listener 1884 127.0.0.53\n").unwrap();
        assert!(!config.local_only && !config.allow_anonymous);
        assert_eq!(config.listeners[0].bind_address, ["127.0.0.53".parse::<IpAddr>().unwrap()]);
        let config = parse("port 1885\nallow_anonymous true\nlistener 1886\n").unwrap();
        assert!(config.allow_anonymous);
        assert_eq!(config.listeners.iter().map(|l| l.port).collect::<Vec<_>>(), [1885, 1886]);
    }

    #[test]
    fn errors_name_file_line_and_option() {
        assert_eq!(
            parse("listener 1883\nbogus_option 1\n").unwrap_err().to_string(),
            "test.conf:2: unknown option `bogus_option`"
        );
        assert_eq!(
            parse("\nmax_inflight_messages lots\n").unwrap_err().to_string(),
            "test.conf:2: invalid value for `max_inflight_messages`: not a number in the allowed range"
        );
        assert_eq!(
            parse("listener 70000\n").unwrap_err().to_string(),
            "test.conf:1: invalid value for `listener`: not a port number (0-65535)"
        );
    }

    /// The limit options: each value Mosquitto takes, and each it refuses, word for word.
    #[test]
    fn limit_options_take_mosquitto_values_and_refuse_bad_ones() {
        use crate::protocol::QoS;
        type Holds = fn(&Config) -> bool;
        let accepted: &[(&str, Holds)] = &[
            ("max_qos 0", |c| c.max_qos == QoS::AtMostOnce),
            ("max_qos 1", |c| c.max_qos == QoS::AtLeastOnce),
            ("max_qos 2", |c| c.max_qos == QoS::ExactlyOnce),
            ("max_inflight_messages 0", |c| c.max_inflight_messages == 0),
            ("max_queued_messages 5", |c| c.max_queued_messages == 5),
            ("max_queued_bytes 4096", |c| c.max_queued_bytes == 4096),
            ("queue_qos0_messages true", |c| c.queue_qos0_messages),
            ("max_packet_size 0", |c| c.max_packet_size == crate::protocol::PACKET_SIZE_MAX),
            ("max_packet_size 20", |c| c.max_packet_size == 20),
            ("max_keepalive 30", |c| c.max_keepalive == 30),
            ("sys_interval 0", |c| c.sys_interval == 0),
            ("memory_limit 0", |c| c.memory_limit.is_none()),
            ("memory_limit 1048576", |c| c.memory_limit == Some(1 << 20)),
            ("user mosquitto", |c| c.user.as_deref() == Some("mosquitto")),
            ("sys_interval 1", |c| c.sys_interval == 1),
            ("retain_available false", |c| !c.retain_available),
            ("allow_zero_length_clientid false", |c| !c.allow_zero_length_clientid),
            ("auto_id_prefix cx-", |c| c.auto_id_prefix == "cx-"),
            ("message_size_limit 1024", |c| c.message_size_limit == 1024),
            ("clientid_prefixes dev-", |c| c.clientid_prefixes.as_deref() == Some("dev-")),
            ("use_username_as_clientid true", |c| c.use_username_as_clientid),
            ("upgrade_outgoing_qos true", |c| c.upgrade_outgoing_qos),
            // Mosquitto takes 1 and 0 for booleans too.
            ("upgrade_outgoing_qos 1", |c| c.upgrade_outgoing_qos),
            ("check_retain_source true", |c| c.check_retain_source),
            ("retain_available 0", |c| !c.retain_available),
            ("persistence true", |c| c.persistence),
            ("persistence_location /var/lib/culex/", |c| {
                c.store_path(2) == Path::new("/var/lib/culex/mosquitto.db.shard2")
            }),
            ("persistence_file culex.db", |c| c.store_path(0) == Path::new("culex.db.shard0")),
            ("autosave_interval 30", |c| c.autosave_interval.as_secs() == 30),
            ("autosave_interval 0", |c| c.autosave_interval.as_secs() == 1),
            ("persistence_sync interval", |c| c.persistence_sync == PersistenceSync::Interval),
            ("persistence_sync ack", |c| c.persistence_sync == PersistenceSync::Ack),
            ("persistent_client_expiration 2d", |c| {
                c.persistent_client_expiration == Some(std::time::Duration::from_secs(2 * 86_400))
            }),
            ("persistent_client_expiration 1y", |c| {
                c.persistent_client_expiration == Some(std::time::Duration::from_secs(365 * 86_400))
            }),
            ("autosave_on_changes false", |c| !c.persistence),
        ];
        for (line, holds) in accepted {
            let config = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert!(holds(&config), "{line}");
        }
        let number = "not a number in the allowed range";
        let refused = [
            ("max_qos 3", "max_qos", "must be 0, 1 or 2"),
            ("max_qos one", "max_qos", number),
            ("max_inflight_messages 70000", "max_inflight_messages", number),
            ("max_queued_messages -1", "max_queued_messages", number),
            ("max_packet_size 19", "max_packet_size", "must be 0 or at least 20"),
            ("max_keepalive 65536", "max_keepalive", number),
            ("sys_interval -1", "sys_interval", number),
            ("memory_limit 1GB", "memory_limit", number),
            ("user", "user", "expected a user name"),
            ("retain_available maybe", "retain_available", "expected `true` or `false`"),
            ("persistence yes", "persistence", "expected `true` or `false`"),
            ("message_size_limit 268435456", "message_size_limit", "must be at most 268435455"),
            ("upgrade_outgoing_qos yes", "upgrade_outgoing_qos", "expected `true` or `false`"),
            ("persistence_file a/b.db", "persistence_file", "expected a file name"),
            ("autosave_interval soon", "autosave_interval", number),
            ("persistence_sync always", "persistence_sync", "expected `ack` or `interval`"),
            (
                "persistent_client_expiration 10x",
                "persistent_client_expiration",
                "expected a number followed by s, h, d, w, m or y (e.g. 2d)",
            ),
        ];
        for (line, option, reason) in refused {
            assert_eq!(
                parse(line).unwrap_err().to_string(),
                format!("test.conf:1: invalid value for `{option}`: {reason}"),
            );
        }
    }

    /// The logging options: the first `log_dest` and `log_type` replace the defaults, later
    /// ones add; errors word for word.
    #[test]
    fn logging_options_take_mosquitto_values_and_refuse_bad_ones() {
        let logging = |text: &str| parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).logging;
        assert_eq!(logging(""), Logging::default());
        assert_eq!(logging("").destinations, [LogDest::Stderr]);
        assert_eq!(
            logging(
                "log_dest stdout\nlog_dest file /var/log/c.log\nlog_dest syslog\nlog_dest topic"
            )
            .destinations,
            [
                LogDest::Stdout,
                LogDest::File("/var/log/c.log".into()),
                LogDest::Syslog,
                LogDest::Topic
            ]
        );
        assert!(logging("log_dest none").destinations.is_empty());
        let types = logging("log_type error\nlog_type subscribe").types;
        assert_eq!(types, LogTypes::ERROR | LogTypes::SUBSCRIBE);
        assert_eq!(logging("log_type all").types, LogTypes::all());
        assert_eq!(logging("log_type none").types, LogTypes::NONE);
        assert_eq!(logging("log_type websockets").types, LogTypes::NONE);
        assert!(!logging("connection_messages false").connection_messages);
        assert!(!logging("log_timestamp false").timestamp);
        assert_eq!(
            logging("log_timestamp_format %Y-%m-%dT%H:%M:%S").timestamp_format.as_deref(),
            Some("%Y-%m-%dT%H:%M:%S")
        );
        assert_eq!(logging("log_facility 5").facility, Some(5));
        let refused = [
            ("log_dest file", "log_dest", "`file` needs a path"),
            (
                "log_dest console",
                "log_dest",
                "expected stdout, stderr, file PATH, syslog, topic or none",
            ),
            ("log_dest dlt", "log_dest", "`dlt` is not supported: use stderr, file or syslog"),
            (
                "log_type verbose",
                "log_type",
                "expected error, warning, notice, information, subscribe, unsubscribe, \
                 websockets, debug, all or none",
            ),
            ("connection_messages maybe", "connection_messages", BOOL_EXPECTED),
            ("log_timestamp yes", "log_timestamp", BOOL_EXPECTED),
            ("log_facility 8", "log_facility", "must be 0 to 7 (LOCAL0 to LOCAL7)"),
        ];
        for (line, option, reason) in refused {
            assert_eq!(
                parse(line).unwrap_err().to_string(),
                format!("test.conf:1: invalid value for `{option}`: {reason}"),
            );
        }
    }

    /// Listener options belong to the last `listener`, or before any, to the default one.
    #[test]
    fn listener_options_belong_to_their_listener() {
        let config = parse(
            "max_connections 5\nport 1884\nlistener 1885 127.0.0.1\nsocket_domain ipv4\n\
             listener 1886\nbind_interface eth0\nmax_connections -1\nprotocol mqtt\n",
        )
        .unwrap();
        let [default, first, second] = config.listeners.as_slice() else { panic!("three") };
        assert_eq!((default.port, default.max_connections), (1884, Some(5)));
        assert_eq!((first.port, first.socket_domain), (1885, Some(SocketDomain::Ipv4)));
        assert_eq!(first.max_connections, None);
        assert_eq!(
            (second.bind_interface.as_deref(), second.max_connections),
            (Some("eth0"), None)
        );
        // No address: every IPv4 and IPv6 address, IPv6 optional; socket_domain keeps one.
        let both: Vec<String> = second
            .bind_addresses(false)
            .iter()
            .map(|b| format!("{} {}", b.addr, b.optional))
            .collect();
        assert_eq!(both, ["0.0.0.0:1886 false", "[::]:1886 true"]);
        let only = Listener { socket_domain: Some(SocketDomain::Ipv6), ..second.clone() };
        assert_eq!(only.bind_addresses(false)[0].addr.to_string(), "[::]:1886");
        // Before any listener and without `port`: the default loopback listener.
        let rated = parse("listener 1883\nmax_connection_rate 50\n").unwrap();
        assert_eq!(rated.listeners[0].max_connection_rate, 50);
        assert!(parse("listener 1883\nmax_connection_rate -1\n").is_err());
        let config = parse("max_connections 3\n").unwrap();
        assert!(config.local_only);
        assert_eq!(config.listeners[0].max_connections, Some(3));
        assert!(!parse("set_tcp_nodelay false").unwrap().tcp_nodelay);
        assert!(Config::default().tcp_nodelay);
        assert!(parse("per_listener_settings false").is_ok());
        // per_listener_settings: what follows a listener is its own; what comes before any
        // listener belongs to the default one, which explicit listeners replace (as Mosquitto).
        let per_listener = parse(
            "per_listener_settings true\nallow_anonymous true\nlistener 1883\n\
             listener 1884\nallow_anonymous true\npassword_file pw\nacl_file acl\n\
             allow_zero_length_clientid false\nauto_id_prefix x-\n",
        )
        .unwrap();
        let (first, second) = (&per_listener.listeners[0], &per_listener.listeners[1]);
        let (first, second) = (per_listener.auth_for(first), per_listener.auth_for(second));
        assert!(!first.allow_anonymous && first.password_file.is_none());
        assert!(first.allow_zero_length_clientid && first.auto_id_prefix == "auto-");
        assert!(second.allow_anonymous && !second.allow_zero_length_clientid);
        assert_eq!(second.password_file.as_deref(), Some(Path::new("pw")));
        assert_eq!(
            (second.acl_file.as_deref(), second.auto_id_prefix.as_str()),
            (Some(Path::new("acl")), "x-")
        );
        assert!(per_listener.has_acl_file());
        let local = parse("per_listener_settings true\n").unwrap();
        assert!(local.auth_for(&local.listeners[0]).allow_anonymous, "local only: anonymous");
        let mounted = parse("listener 1883\nlistener 1884\nmount_point site1/\n").unwrap();
        let mount_points: Vec<_> =
            mounted.listeners.iter().map(|l| l.mount_point.as_deref()).collect();
        assert_eq!(mount_points, [None, Some("site1/")]);
        for (line, option, reason) in [
            ("socket_domain ipv5", "socket_domain", "expected `ipv4` or `ipv6`"),
            ("max_connections -2", "max_connections", "must be -1 (no limit) or a count"),
            ("protocol http", "protocol", "expected `mqtt` or `websockets`"),
            ("bind_interface", "bind_interface", "expected a network interface name"),
            ("set_tcp_nodelay on", "set_tcp_nodelay", BOOL_EXPECTED),
            ("mount_point site/#", "mount_point", "expected a topic prefix without wildcards"),
        ] {
            assert_eq!(
                parse(line).unwrap_err().to_string(),
                format!("test.conf:1: invalid value for `{option}`: {reason}"),
            );
        }
    }

    #[test]
    fn options_after_a_connection_belong_to_it() {
        // The tutorial's master: the second block's options apply to `mytest2` only.
        let config = parse(
            "connection mytest\naddress 127.0.0.88:1883\ntopic room1/# both 2 sensor/ myhouse/\n\
             connection mytest2\naddress 127.0.0.89\ntopic room1/# both 2 sensor/ myhouse/\n\
             try_private false\nbridge_protocol_version mqttv50\nrestart_timeout 2 9\n",
        )
        .unwrap();
        let [first, second] = config.bridges.as_slice() else { panic!("two bridges") };
        assert_eq!((first.name.as_str(), first.try_private), ("mytest", true));
        assert_eq!(first.addresses, [Address { host: "127.0.0.88".into(), port: 1883 }]);
        assert_eq!(first.protocol, crate::protocol::ProtocolVersion::V311);
        assert_eq!((second.name.as_str(), second.try_private), ("mytest2", false));
        assert_eq!(second.protocol, crate::protocol::ProtocolVersion::V5);
        assert_eq!(second.restart_timeout.cap, Some(std::time::Duration::from_secs(9)));
        assert!(second.remote_clientid().ends_with(".mytest2"));
        assert_eq!(second.local_clientid(), format!("local.{}", second.remote_clientid()));
    }

    #[test]
    fn bad_bridge_configurations_name_file_line_and_option() {
        for (text, error) in [
            (
                "listener 1883\naddress 10.0.0.1\n",
                "test.conf:2: invalid value for `address`: \
                 invalid bridge configuration: no `connection` before it",
            ),
            (
                "connection a\naddress h1\naddresses h2\n",
                "test.conf:3: invalid value for `addresses`: \
                 invalid bridge configuration: a second address line",
            ),
            (
                "connection a\naddress h1\ntopic x/# sideways\n",
                "test.conf:3: invalid value for `topic`: direction `sideways` is not out, in or both",
            ),
            (
                "connection a\ntopic x/#\n",
                "test.conf:1: invalid value for `connection`: connection `a` has no address",
            ),
            (
                "connection a\naddress h\nkeepalive_interval 2\n",
                "test.conf:3: invalid value for `keepalive_interval`: must be at least 5 seconds",
            ),
            (
                "connection a\naddress h\ntopic #\nconnection a\n",
                "test.conf:4: invalid value for `connection`: \
                 a connection of this name already exists",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), error, "{text}");
        }
    }

    #[test]
    fn listeners_take_host_names_bind_address_and_max_topic_alias() {
        let config =
            parse("listener 1884 localhost\nmax_topic_alias 3\nmax_topic_alias_broker 4\n")
                .unwrap();
        let addresses: Vec<String> =
            config.listeners[0].bind_addresses(false).iter().map(|b| b.addr.to_string()).collect();
        assert!(addresses.contains(&"127.0.0.1:1884".to_string()), "{addresses:?}");
        assert_eq!(config.listeners[0].max_topic_alias, 3);
        assert_eq!(config.listeners[0].max_topic_alias_broker, 4);
        // The default listener, as older Mosquitto files write it.
        let config = parse("bind_address 127.0.0.53\nport 1885\n").unwrap();
        let addresses: Vec<String> =
            config.listeners[0].bind_addresses(false).iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addresses, ["127.0.0.53:1885"]);
        assert!(!config.local_only && !config.allow_anonymous);
        assert_eq!(parse("maximum_qos 1\n").unwrap().max_qos, crate::protocol::QoS::AtLeastOnce);
        assert_eq!(
            parse("listener 1884\nmax_topic_alias 65536\n").unwrap_err().to_string(),
            "test.conf:2: invalid value for `max_topic_alias`: not a number in the allowed range"
        );
        assert_eq!(
            parse("listener 1884\nmax_topic_alias_broker -1\n").unwrap_err().to_string(),
            "test.conf:2: invalid value for `max_topic_alias_broker`: not a number in the allowed \
             range"
        );
    }

    /// Lines an operator (or a corrupted file) could write: known option names with odd
    /// values, unknown names, stray bytes. (`include_dir` is left out: it would read whatever
    /// directory a value happened to name.)
    fn arb_config() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let known = prop::sample::select(vec![
            "listener",
            "port",
            "bind_address",
            "max_topic_alias",
            "max_packet_size",
            "max_qos",
            "log_dest",
            "log_type",
            "include_dir",
            "connection",
            "address",
            "topic",
            "restart_timeout",
            "persistent_client_expiration",
            "mount_point",
            "max_connections",
            "socket_domain",
            "memory_limit",
            "user",
            "per_listener_settings",
            "cafile",
            "bogus",
        ]);
        let value = prop_oneof![
            "[ -~]{0,30}",
            "[0-9]{1,12}",
            Just("-1".to_string()),
            Just("room1/# both 2 sensor/ myhouse/".to_string()),
            Just("127.0.0.1".to_string()),
        ];
        let line = prop_oneof![
            (known, value).prop_map(|(option, value)| format!("{option} {value}")),
            "[^\n]{0,40}",
        ];
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    proptest::proptest! {
        /// Whatever a file holds, parsing ends in a configuration or an error naming the file
        /// and a line within it, never a panic.
        #[test]
        fn any_text_parses_or_names_file_and_line(text in arb_config()) {
            if let Err(error) = Config::parse(&text, Path::new("fuzz.conf")) {
                let message = error.to_string();
                proptest::prop_assert!(message.starts_with("fuzz.conf:"), "{}", message);
                if let ConfigError::InvalidValue { line, .. }
                | ConfigError::UnknownOption { line, .. }
                | ConfigError::Refused { line, .. } = error
                {
                    proptest::prop_assert!((1..=text.lines().count()).contains(&line));
                }
            }
        }
    }

    #[test]
    fn mosquitto_2_1_lines_are_applied() {
        let config = parse(
            "listener 1883\naccept_protocol_versions 4, 5\npersistent_client_expiration 90s\n\
             connection b\naddress h\ntopic #\nbridge_receive_maximum 7\n\
             bridge_session_expiry_interval 0xFFFFFFFF\nbridge_tcp_keepalive 30 5 3\n\
             bridge_tcp_user_timeout 10000\nrestart_timeout 2 30 60\n",
        )
        .unwrap();
        assert_eq!(config.listeners[0].protocol_levels, Some(vec![4, 5]));
        let expiration = config.persistent_client_expiration;
        assert_eq!(expiration, Some(std::time::Duration::from_secs(90)));
        let bridge = &config.bridges[0];
        assert_eq!(bridge.receive_maximum.map(|r| r.get()), Some(7));
        assert_eq!(bridge.session_expiry_interval, Some(u32::MAX));
        let secs = std::time::Duration::from_secs;
        assert_eq!(bridge.tcp_keepalive, Some((secs(30), secs(5), 3)));
        assert_eq!(bridge.tcp_user_timeout, Some(std::time::Duration::from_millis(10_000)));
        assert_eq!(bridge.restart_timeout.stable, Some(secs(60)));
        for bad in ["accept_protocol_versions 6", "accept_protocol_versions 4,4"] {
            assert!(parse(&format!("listener 1883\n{bad}\n")).is_err(), "{bad}");
        }
        assert!(parse("global_plugin /usr/lib/x.so\n").is_err());
    }

    /// Every option name of Mosquitto 2.1's mosquitto.conf(5) (general, listener, TLS and
    /// bridge sections) is one Culex knows: applied, warned about or refused, never unknown.
    #[test]
    fn every_option_of_mosquitto_2_1s_manual_is_known() {
        let manual =
            "acl_file allow_anonymous allow_duplicate_messages allow_zero_length_clientid \
            auth_plugin_deny_special_chars auto_id_prefix autosave_interval autosave_on_changes \
            check_retain_source clientid_prefixes connection_messages enable_control_api \
            global_max_clients global_max_connections global_plugin include_dir log_dest \
            log_facility log_timestamp log_timestamp_format log_type max_inflight_bytes \
            max_inflight_messages max_keepalive max_packet_size max_queued_bytes \
            max_queued_messages memory_limit message_size_limit password_file \
            per_listener_settings persistence persistence_file persistence_location \
            persistent_client_expiration pid_file plugin_opt_name plugin psk_file \
            queue_qos0_messages retain_available retain_expiry_interval set_tcp_nodelay \
            sys_interval upgrade_outgoing_qos user accept_protocol_versions bind_address \
            bind_interface enable_proxy_protocol http_dir listener listener_allow_anonymous \
            listener_auto_id_prefix max_connections max_qos max_topic_alias_broker \
            max_topic_alias mount_point port protocol proxy_protocol_v2_require_tls \
            socket_domain use_username_as_clientid packet_buffer_size websockets_headers_size \
            websockets_log_level websockets_origin cafile capath certfile ciphers ciphers_tls1.3 \
            crlfile dhparamfile disable_client_cert_date_checks keyfile require_certificate \
            tls_engine tls_engine_kpass_sha1 tls_keyform tls_version use_identity_as_username \
            use_subject_as_username psk_hint address addresses bridge_attempt_unsubscribe \
            bridge_bind_address bridge_max_packet_size bridge_max_topic_alias \
            bridge_outgoing_retain bridge_protocol_version bridge_receive_maximum \
            bridge_session_expiry_interval bridge_tcp_keepalive bridge_tcp_user_timeout \
            cleansession local_cleansession connection keepalive_interval idle_timeout \
            local_clientid local_password local_username notifications notifications_local_only \
            notification_topic remote_clientid remote_password remote_username restart_timeout \
            round_robin start_type threshold topic try_private bridge_reload_type bridge_alpn \
            bridge_cafile bridge_capath bridge_certfile bridge_identity bridge_insecure \
            bridge_keyfile bridge_psk bridge_require_ocsp bridge_tls_use_os_certs \
            bridge_tls_version bridge_ciphers bridge_ciphers_tls1.3 clientid username password \
            auth_plugin auth_opt_name";
        let unknown: Vec<&str> =
            manual.split_whitespace().filter(|o| !is_known_option(o)).collect();
        assert!(unknown.is_empty(), "Mosquitto 2.1 options Culex does not know: {unknown:?}");
    }

    #[test]
    fn mosquitto_2_1_options_are_recognised() {
        let (_, warnings) = Config::parse(
            "global_max_connections 1000\nlistener 1883\naccept_protocol_versions 4,5\n\
             retain_expiry_interval 5\n",
            Path::new("m.conf"),
        )
        .unwrap();
        assert_eq!(warnings.len(), 2, "the unapplied ones: {warnings:?}");
        let config = parse("listener 1883\nenable_proxy_protocol 2\n").unwrap();
        assert_eq!(config.listeners[0].proxy_protocol, Some(crate::proxy::Version::V2));
    }

    #[test]
    fn a_tls_listener_reads_its_options_and_needs_certfile_and_keyfile() {
        let config = parse(
            "listener 1883\nrequire_certificate false\nuse_identity_as_username false\n\
             listener 8883\ncertfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\n\
             require_certificate true\nuse_subject_as_username true\ntls_version tlsv1.3\n\
             ciphers_tls1.3 TLS_AES_256_GCM_SHA384\ntls_keyform pem\n",
        )
        .unwrap();
        // `false` asks nothing of a plain listener.
        assert_eq!(config.listeners[0].tls, None);
        let tls = config.listeners[1].tls.clone().unwrap();
        assert_eq!(tls.certfile, Some("/c.pem".into()));
        assert!(tls.require_certificate);
        assert_eq!(tls.username_from_certificate, Some(crate::tls::CertificateName::Subject));
        assert_eq!(tls.min_version, crate::tls::TlsVersion::Tls13);
        assert_eq!(tls.ciphers_tls13.map(|c| c.len()), Some(1));
        assert_eq!(tls.ciphers_tls12, None);

        for (text, line, option, says) in [
            ("listener 8883\ncafile /etc/ca.pem\n", 2, "cafile", "has no `certfile`"),
            ("listener 8883\ncertfile /c\n", 2, "certfile", "has no `keyfile`"),
            (
                "listener 8883\ncertfile /c\nkeyfile /k\nrequire_certificate true\n",
                4,
                "require_certificate",
                "needs `cafile` or `capath`",
            ),
            (
                "listener 8883\ncertfile /c\nkeyfile /k\nuse_identity_as_username true\n",
                4,
                "use_identity_as_username",
                "needs `require_certificate true`",
            ),
            ("listener 8883\npsk_hint h\n", 2, "psk_hint", "pre-shared keys"),
            ("tls_engine pkcs11\n", 1, "tls_engine", "OpenSSL engine"),
            ("listener 8883\ntls_keyform engine\n", 2, "tls_keyform", "OpenSSL engine"),
        ] {
            let error = Config::parse(text, Path::new("t.conf")).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, ConfigError::Refused { .. }), "{message}");
            assert!(message.starts_with(&format!("t.conf:{line}: option `{option}`")), "{message}");
            assert!(message.contains(says), "{message}");
        }
        for (text, says) in [
            ("listener 8883\nciphers DHE-RSA-AES256-SHA\n", "no equivalent"),
            ("listener 8883\ntls_version tlsv1.1\n", "TLS 1.2 and 1.3 only"),
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(message.starts_with("test.conf:2: invalid value"), "{message}");
            assert!(message.contains(says), "{message}");
        }
        let (_, warnings) = Config::parse(
            "listener 8883\ncertfile /c\nkeyfile /k\ndhparamfile /dh.pem\n",
            Path::new("t.conf"),
        )
        .unwrap();
        assert!(warnings[0].starts_with("t.conf:4: option `dhparamfile` has no effect"));
    }

    #[test]
    fn a_bridge_dials_tls_with_a_ca_and_never_plaintext_without_one() {
        let bridge = "connection a\naddress broker.example.com:8883\ntopic # both 1\n";
        let config = parse(&format!(
            "{bridge}bridge_cafile /ca.pem\nbridge_certfile /c.pem\nbridge_keyfile /k.pem\n\
             bridge_insecure true\nbridge_tls_version tlsv1.3\nbridge_alpn mqtt\n\
             bridge_require_ocsp false\nbridge_tls_use_os_certs true\n\
             bridge_ciphers ECDHE-RSA-AES128-GCM-SHA256\nbridge_ciphers_tls1.3 TLS_AES_128_GCM_SHA256\n"
        ))
        .unwrap();
        let tls = config.bridges[0].tls.clone().unwrap();
        assert_eq!(tls.cafile, Some("/ca.pem".into()));
        assert_eq!(tls.keyfile, Some("/k.pem".into()));
        assert!(tls.insecure);
        assert_eq!(tls.min_version, crate::tls::TlsVersion::Tls13);
        assert_eq!(tls.alpn.as_deref(), Some("mqtt"));
        assert!(tls.use_os_certs);
        assert_eq!(tls.ciphers_tls12.map(|c| c.len()), Some(1));
        assert_eq!(tls.ciphers_tls13.map(|c| c.len()), Some(1));
        assert!(parse(&format!("{bridge}bridge_tls_use_os_certs true\n")).is_ok());
        // `bridge_insecure false` alone asks nothing.
        assert_eq!(
            parse(&format!("{bridge}bridge_insecure false\n")).unwrap().bridges[0].tls,
            None
        );

        for (extra, says) in [
            ("bridge_insecure true\n", "without bridge_cafile, bridge_capath"),
            ("bridge_certfile /c.pem\nbridge_keyfile /k.pem\n", "without bridge_cafile"),
            ("bridge_cafile /ca.pem\nbridge_certfile /c.pem\n", "go together"),
            ("bridge_require_ocsp true\n", "OCSP is not checked"),
            ("bridge_tls_version tlsv1.1\n", "TLS 1.2 and 1.3 only"),
        ] {
            let message = parse(&format!("{bridge}{extra}")).unwrap_err().to_string();
            assert!(message.contains(says), "{extra}: {message}");
            assert!(message.starts_with("test.conf:"), "{message}");
        }
        for option in ["bridge_psk", "bridge_identity"] {
            let error = parse(&format!("{bridge}{option} x\n")).unwrap_err();
            assert!(matches!(error, ConfigError::Refused { line: 4, .. }), "{error}");
            assert!(error.to_string().contains("pre-shared keys"), "{error}");
        }
    }

    #[test]
    fn include_dir_reads_conf_files_in_order_and_names_them_in_errors() {
        let dir = std::env::temp_dir().join(format!("culex-include-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.conf"), "max_inflight_messages 7\n").unwrap();
        std::fs::write(dir.join("a.conf"), "max_inflight_messages 3\nmax_queued_messages 9\n")
            .unwrap();
        std::fs::write(dir.join("ignored.txt"), "garbage\n").unwrap();
        let main = format!("listener 1883\ninclude_dir {}\n", dir.display());
        let config = parse(&main).unwrap();
        assert_eq!((config.max_inflight_messages, config.max_queued_messages), (7, 9));
        std::fs::write(dir.join("c.conf"), "\nbogus 1\n").unwrap();
        let error = parse(&main).unwrap_err().to_string();
        assert_eq!(error, format!("{}:2: unknown option `bogus`", dir.join("c.conf").display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unimplemented_mosquitto_options_warn_with_file_and_line() {
        let (_, warnings) =
            Config::parse("listener 1883\nmax_inflight_bytes 10\n", Path::new("m.conf")).unwrap();
        assert_eq!(
            warnings,
            ["m.conf:2: option `max_inflight_bytes` is not implemented yet and is ignored"]
        );
    }

    #[test]
    fn authentication_plugins_and_listener_allow_anonymous_stop_the_broker() {
        for option in [
            "auth_plugin /usr/lib/x.so",
            "plugin /usr/lib/mosquitto_dynamic_security.so",
            "plugin_load dynsec /x.so",
            "plugin_use dynsec",
            "auth_opt_db_host localhost",
            "plugin_opt_config_file /x.json",
            "listener_allow_anonymous false",
        ] {
            let error = parse(&format!("listener 1883\n{option}\n")).unwrap_err();
            assert!(matches!(error, ConfigError::Refused { line: 2, .. }), "{option}: {error}");
        }
    }
}
