//! SIGHUP (`systemctl reload`): the TLS, password and ACL files read again, and the
//! configuration file too, put in force where that needs no restart, as Mosquitto 2.1 does:
//! limits, access settings, logging, `sys_interval`, and bridges added, removed or changed
//! (an unchanged bridge keeps its link and its queue). What needs a restart is logged by name
//! and left as it runs; a configuration with errors is refused whole.
//!
//! The signal thread decides; each shard applies its part in its sweep, from an inbox of
//! `Order`s, so nothing here touches a shard's state.

use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::{Receiver, Sender};

use super::ConnectionLimit;
use crate::auth::Credentials;
use crate::broker::counters::BridgeCounters;
use crate::broker::BridgeStop;
use crate::config::{Bridge, Config};
use crate::tls::ServerTls;

/// What a shard's sweep does for a reload, in the order sent.
pub enum Order {
    /// Put this configuration in force (`Shard::reconfigure`).
    Configure(Arc<Config>),
    /// Stop the task of the bridge with this local session.
    StopBridge { local_id: String, how: BridgeStop },
    /// Start a bridge's task on this shard.
    StartBridge(Box<Bridge>, Arc<BridgeCounters>),
}

/// The running broker as a reload needs it.
pub(super) struct Running {
    /// The configuration in force.
    pub config: Config,
    /// Shards from this index on run bridges only.
    pub worker_count: usize,
    /// Each shard's orders, by shard index.
    pub inboxes: Vec<Sender<Order>>,
    /// Where each bridge runs.
    pub bridges: Vec<BridgeHome>,
    /// Each set of credentials: one for all listeners, or one per listener in order with
    /// `per_listener_settings true`.
    pub credentials: Vec<Arc<Credentials>>,
    /// Every TLS listener's certificates and keys.
    pub server_tls: Vec<Arc<ServerTls>>,
    /// Each listener's `max_connections` and `max_connection_rate`, in order.
    pub connection_limits: Vec<Arc<ConnectionLimit>>,
}

pub(super) struct BridgeHome {
    pub name: String,
    pub shard: usize,
    pub counters: Arc<BridgeCounters>,
}

static RUNNING: OnceLock<Mutex<Running>> = OnceLock::new();

/// Makes the running broker known to `reload`; the receivers are the shards' inboxes.
pub(super) fn install(running: Running) {
    let _ = RUNNING.set(Mutex::new(running));
}

/// An inbox per shard.
pub(super) fn inboxes(shard_count: usize) -> (Vec<Sender<Order>>, Vec<Receiver<Order>>) {
    (0..shard_count).map(|_| crossbeam_channel::unbounded()).unzip()
}

/// The counters of every bridge running now (for the metrics listener).
pub fn bridge_counters() -> Vec<Arc<BridgeCounters>> {
    let Some(running) = RUNNING.get() else { return Vec::new() };
    let running = running.lock().unwrap_or_else(|e| e.into_inner());
    running.bridges.iter().map(|b| b.counters.clone()).collect()
}

/// SIGHUP. `read` is the configuration file read again (`None` when the broker runs without
/// one): with an error it is refused whole and nothing changes. Safe from any thread.
pub fn reload(read: Option<Result<(Config, Vec<String>), String>>) {
    let Some(running) = RUNNING.get() else { return };
    let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
    let new = match read {
        None => running.config.clone(),
        Some(Ok((mut config, warnings))) => {
            for warning in warnings {
                tracing::warn!("SIGHUP: {warning}");
            }
            config.verbose = running.config.verbose;
            config
        }
        Some(Err(error)) => {
            tracing::error!("SIGHUP: {error}; the configuration in force stays, whole");
            return;
        }
    };
    let changes = running.config.changes_to(&new);
    let new = new.keeping_restart_options_of(&running.config);
    if let Err(error) = check(&running, &new) {
        tracing::error!("SIGHUP: {error}; the configuration in force stays, whole");
        return;
    }
    if !changes.need_restart.is_empty() {
        tracing::warn!(
            options = ?changes.need_restart,
            "SIGHUP: these options changed but apply only when the broker starts: they keep \
             their running values"
        );
    }
    reload_files(&running, &new);
    let new = Arc::new(new);
    for inbox in &running.inboxes {
        let _ = inbox.send(Order::Configure(new.clone()));
    }
    for (limit, listener) in running.connection_limits.iter().zip(&new.listeners) {
        limit.set(listener);
    }
    if running.config.logging != new.logging {
        crate::logging::reconfigure(&new.logging, new.verbose);
    }
    apply_bridges(&mut running, &new, &changes);
    tracing::info!(
        applied = ?changes.applied,
        bridges_added = ?changes.bridges_added,
        bridges_removed = ?changes.bridges_removed,
        bridges_changed = ?changes.bridges_changed,
        "SIGHUP: configuration reloaded"
    );
    running.config = Arc::unwrap_or_clone(new);
}

/// What must load before anything changes: every listener's password and ACL files under the
/// new settings, and each bridge's TLS files.
fn check(running: &Running, new: &Config) -> Result<(), String> {
    for auth in auth_settings(running, new) {
        Credentials::load(auth).map_err(|e| e.to_string())?;
    }
    for bridge in &new.bridges {
        if let Some(tls) = &bridge.tls {
            crate::tls::client_config(tls)
                .map_err(|e| format!("connection {}: {e}", bridge.name))?;
        }
    }
    Ok(())
}

/// The access settings for each of `running.credentials`, from `new`.
fn auth_settings(running: &Running, new: &Config) -> Vec<crate::auth::AuthConfig> {
    match new.per_listener_settings {
        false => running.credentials.iter().map(|_| new.auth()).collect(),
        true => new.listeners.iter().map(|l| new.auth_for(l)).collect(),
    }
}

/// Reads every TLS listener's certificate, key, CAs and CRL again, and the password and ACL
/// files under the new settings. Connected clients stay; a TLS file that fails to load leaves
/// what was in force.
fn reload_files(running: &Running, new: &Config) {
    for tls in &running.server_tls {
        let certfile = tls.settings().certfile.clone().unwrap_or_default();
        match tls.reload() {
            Ok(()) => tracing::info!(certfile = %certfile.display(), "SIGHUP: TLS files reloaded"),
            Err(error) => tracing::error!(
                "SIGHUP: {error}; new connections keep the certificate in force ({})",
                certfile.display()
            ),
        }
    }
    for (credentials, auth) in running.credentials.iter().zip(auth_settings(running, new)) {
        match credentials.reload(Some(auth)) {
            Ok(reloaded) => tracing::info!(
                users_added = ?reloaded.users_added,
                users_removed = ?reloaded.users_removed,
                passwords_changed = ?reloaded.passwords_changed,
                acl_changed = reloaded.acl_changed,
                "SIGHUP: password and acl files reloaded"
            ),
            Err(error) => tracing::error!("{error}; the previous files stay in force"),
        }
    }
}

/// Stops the bridges removed, restarts the bridges changed on the shard they ran on, and
/// starts the bridges added: on the bridge shard with the fewest bridges, or, in a broker
/// started without bridges (and so without bridge shards), on the worker with the fewest.
fn apply_bridges(running: &mut Running, new: &Config, changes: &crate::config::Changes) {
    let old = running.config.bridges.clone();
    let find = |bridges: &[Bridge], name: &str| bridges.iter().find(|b| b.name == name).cloned();
    let mut added: Vec<Bridge> =
        changes.bridges_added.iter().filter_map(|name| find(&new.bridges, name)).collect();
    for name in changes.bridges_removed.iter().chain(&changes.bridges_changed) {
        let Some(at) = running.bridges.iter().position(|home| home.name == *name) else {
            continue;
        };
        let (Some(before), after) = (find(&old, name), find(&new.bridges, name)) else { continue };
        let home = &running.bridges[at];
        let inbox = &running.inboxes[home.shard];
        let local_id = before.local_clientid();
        match after {
            // Changed, with the same local session: a new task takes it, queue and all.
            Some(after) if after.local_clientid() == local_id => {
                let how = BridgeStop::Replaced;
                let _ = inbox.send(Order::StopBridge { local_id, how });
                let _ = inbox.send(Order::StartBridge(Box::new(after), home.counters.clone()));
            }
            after => {
                let how = BridgeStop::Removed;
                let _ = inbox.send(Order::StopBridge { local_id, how });
                running.bridges.remove(at);
                added.extend(after);
            }
        }
    }
    let shard_count = running.inboxes.len();
    let candidates = match running.worker_count < shard_count {
        true => running.worker_count..shard_count,
        false => 0..shard_count,
    };
    for bridge in added {
        let load = |shard: &usize| running.bridges.iter().filter(|b| b.shard == *shard).count();
        let Some(shard) = candidates.clone().min_by_key(load) else { return };
        let counters = Arc::new(BridgeCounters::new(&bridge.name));
        let home = BridgeHome { name: bridge.name.clone(), shard, counters: counters.clone() };
        running.bridges.push(home);
        let _ = running.inboxes[shard].send(Order::StartBridge(Box::new(bridge), counters));
    }
}
