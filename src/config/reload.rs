//! What a configuration read again (SIGHUP) changes against the one in force: which options
//! apply at once, which only at the next start, and which bridges come, go or change.

use super::{Config, Listener};

/// The differences between the configuration in force and a new one, by Mosquitto's option
/// names, for the runtime to apply and the log to say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Options whose new value applies at once.
    pub applied: Vec<&'static str>,
    /// Options that differ but apply only when the broker starts: left as they are.
    pub need_restart: Vec<&'static str>,
    /// Bridges (`connection` names) only the new configuration has.
    pub bridges_added: Vec<String>,
    /// Bridges only the configuration in force has.
    pub bridges_removed: Vec<String>,
    /// Bridges in both whose options or topics differ: they reconnect.
    pub bridges_changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// The options that apply only when the broker starts, each with the name the log gives it:
/// `changes_to` names those that differ, `keeping_restart_options_of` keeps their running
/// values. (Listeners and `log_dest topic` are handled apart: part of them may change.)
macro_rules! restart_only {
    ($apply:ident) => {
        $apply!(
            local_only = "listener",
            pid_file,
            shards,
            per_listener_settings,
            persistence,
            persistence_location,
            persistence_sync,
            autosave_interval,
            persistence_file,
            user,
            tcp_nodelay = "set_tcp_nodelay",
            bridge_shards,
            metrics_listener,
            websockets_headers_size,
        )
    };
}

impl Config {
    /// What `new` changes against `self`. Every option is classified here, so a field added
    /// to `Config` does not compile until it is (the destructuring below names each one).
    pub fn changes_to(&self, new: &Config) -> Changes {
        let Config {
            listeners,
            local_only: _,
            allow_anonymous: _,
            password_file: _,
            acl_file: _,
            pid_file: _,
            shards: _,
            max_inflight_messages: _,
            max_queued_messages: _,
            max_queued_bytes: _,
            queue_qos0_messages: _,
            max_packet_size: _,
            max_keepalive: _,
            allow_zero_length_clientid: _,
            auto_id_prefix: _,
            per_listener_settings: _,
            retain_available: _,
            persistence: _,
            persistence_location: _,
            persistence_sync: _,
            autosave_interval: _,
            persistence_file: _,
            persistent_client_expiration: _,
            clientid_prefixes: _,
            use_username_as_clientid: _,
            upgrade_outgoing_qos: _,
            check_retain_source: _,
            message_size_limit: _,
            max_qos: _,
            sys_interval: _,
            logging,
            memory_limit: _,
            user: _,
            tcp_nodelay: _,
            bridges,
            bridge_shards: _,
            metrics_listener: _,
            reason_strings: _,
            max_subscriptions_per_client: _,
            websockets_headers_size: _,
            verbose: _,
        } = new;
        let mut changes = Changes::default();
        macro_rules! compare {
            ($list:ident: $($field:ident $(= $name:literal)?),+ $(,)?) => {
                $(if self.$field != new.$field {
                    changes.$list.push(compare!(@name $field $($name)?));
                })+
            };
            (@name $field:ident) => { stringify!($field) };
            (@name $field:ident $name:literal) => { $name };
        }
        compare!(applied:
            allow_anonymous,
            password_file,
            acl_file,
            max_inflight_messages,
            max_queued_messages,
            max_queued_bytes,
            queue_qos0_messages,
            max_packet_size,
            max_keepalive,
            allow_zero_length_clientid,
            auto_id_prefix,
            retain_available,
            persistent_client_expiration,
            clientid_prefixes,
            use_username_as_clientid,
            upgrade_outgoing_qos,
            check_retain_source,
            message_size_limit,
            max_qos,
            sys_interval,
            logging = "log_dest, log_type and the other logging options",
            memory_limit,
            reason_strings,
            max_subscriptions_per_client,
        );
        macro_rules! need_restart {
            ($($field:ident $(= $name:literal)?),+ $(,)?) => {
                compare!(need_restart: $($field $(= $name)?),+)
            };
        }
        restart_only!(need_restart);
        if self.logging.destinations.contains(&super::LogDest::Topic)
            != logging.destinations.contains(&super::LogDest::Topic)
        {
            changes.need_restart.push("log_dest topic");
        }
        compare_listeners(&self.listeners, listeners, &mut changes);
        for bridge in bridges {
            match self.bridges.iter().find(|b| b.name == bridge.name) {
                None => changes.bridges_added.push(bridge.name.clone()),
                Some(old) if old != bridge => changes.bridges_changed.push(bridge.name.clone()),
                Some(_) => {}
            }
        }
        for old in &self.bridges {
            if !bridges.iter().any(|b| b.name == old.name) {
                changes.bridges_removed.push(old.name.clone());
            }
        }
        changes.need_restart.dedup();
        changes
    }

    /// This configuration with the options that apply only at start (those `changes_to`
    /// calls `need_restart`) as `running` has them: what a reload puts in force.
    pub fn keeping_restart_options_of(mut self, running: &Config) -> Config {
        macro_rules! keep {
            ($($field:ident $(= $name:literal)?),+ $(,)?) => {
                $(self.$field = running.$field.clone();)+
            };
        }
        restart_only!(keep);
        let topic = super::LogDest::Topic;
        self.logging.destinations.retain(|dest| *dest != topic);
        if running.logging.destinations.contains(&topic) {
            self.logging.destinations.push(topic);
        }
        let mut changes = Changes::default();
        compare_listeners(&running.listeners, &self.listeners, &mut changes);
        if changes.need_restart.contains(&"listener") {
            self.listeners = running.listeners.clone();
        }
        self
    }
}

/// Listeners are bound at start: a listener added, removed or changed needs a restart, but for
/// `max_connections`, `max_connection_rate` and, with `per_listener_settings true`, its access
/// settings.
fn compare_listeners(old: &[Listener], new: &[Listener], changes: &mut Changes) {
    let sockets_alike = |a: &Listener, b: &Listener| {
        let mut a = a.clone();
        a.max_connections = b.max_connections;
        a.max_connection_rate = b.max_connection_rate;
        a.security = b.security.clone();
        a == *b
    };
    if old.len() != new.len() || old.iter().zip(new).any(|(a, b)| !sockets_alike(a, b)) {
        changes.need_restart.push("listener");
        return;
    }
    if old.iter().zip(new).any(|(a, b)| a.max_connections != b.max_connections) {
        changes.applied.push("max_connections");
    }
    if old.iter().zip(new).any(|(a, b)| a.max_connection_rate != b.max_connection_rate) {
        changes.applied.push("max_connection_rate");
    }
    if old.iter().zip(new).any(|(a, b)| a.security != b.security) {
        changes.applied.push("listener access settings (per_listener_settings)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("test.conf")).unwrap().0
    }

    const BASE: &str = "listener 1883\nallow_anonymous true\nmax_queued_messages 100\n";
    const BRIDGES: &str = "connection a\naddress 127.0.0.1:1884\ntopic x/# out 1\n\
                           connection b\naddress 127.0.0.1:1885\ntopic y/# out 1\n";

    fn with_bridges(general: &str) -> Config {
        parse(&format!("{general}{BRIDGES}"))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(with_bridges(BASE).changes_to(&with_bridges(BASE)).is_empty());
    }

    #[test]
    fn limits_and_logging_apply_listeners_and_stores_wait_for_a_restart() {
        let new = BASE.replace("max_queued_messages 100", "max_queued_messages 5")
            + "message_size_limit 100\nlog_type all\npersistence true\nlistener 1886\n";
        let changes = with_bridges(BASE).changes_to(&with_bridges(&new));
        assert_eq!(
            changes.applied,
            [
                "max_queued_messages",
                "message_size_limit",
                "log_dest, log_type and the other logging options"
            ]
        );
        assert_eq!(changes.need_restart, ["persistence", "listener"]);
    }

    #[test]
    fn what_a_reload_puts_in_force_needs_no_restart() {
        let old = with_bridges(BASE);
        let new = with_bridges(
            &(BASE.replace("listener 1883\n", "listener 1884\n")
                + "persistence true\nmax_qos 1\nlog_dest stderr\nlog_dest topic\nshards 3\n"),
        );
        let kept = new.keeping_restart_options_of(&old);
        let changes = old.changes_to(&kept);
        assert!(changes.need_restart.is_empty(), "{changes:?}");
        assert_eq!(changes.applied, ["max_qos"]);
    }

    #[test]
    fn max_connection_rate_applies() {
        let new = BASE.replace("listener 1883\n", "listener 1883\nmax_connection_rate 100\n");
        let changes = with_bridges(BASE).changes_to(&with_bridges(&new));
        assert_eq!(changes.applied, ["max_connection_rate"]);
        assert!(changes.need_restart.is_empty());
    }

    #[test]
    fn max_connections_alone_applies() {
        let new = BASE.replace("listener 1883\n", "listener 1883\nmax_connections 10\n");
        let changes = with_bridges(BASE).changes_to(&with_bridges(&new));
        assert_eq!(changes.applied, ["max_connections"]);
        assert!(changes.need_restart.is_empty());
    }

    #[test]
    fn bridges_are_matched_by_name() {
        let bridges = BRIDGES.replace("topic y/# out 1", "topic y/# both 1");
        let bridges = bridges.replace("connection a", "connection c")
            + "connection d\naddress 127.0.0.1:1887\ntopic z/# in 0\n";
        let changes = with_bridges(BASE).changes_to(&parse(&format!("{BASE}{bridges}")));
        assert_eq!(changes.bridges_added, ["c", "d"]);
        assert_eq!(changes.bridges_removed, ["a"]);
        assert_eq!(changes.bridges_changed, ["b"]);
        assert!(changes.applied.is_empty() && changes.need_restart.is_empty());
    }
}
