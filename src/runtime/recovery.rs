//! Start-up with `persistence true`: read every shard's store before any executor runs, settle
//! what a crash left twice (a session mid-takeover, a retained topic written on two shards),
//! and hand each shard its part, interest replicas and registry entries included, so that the
//! first client finds the broker as it was.

use std::sync::Arc;

use ahash::AHashMap;
use bytestring::ByteString;

use super::StartError;
use crate::broker::journal::restored_message;
use crate::broker::messages::ShardId;
use crate::broker::{registry_owner, Restored};
use crate::config::Config;
use crate::store::{ShardStore, StoreOp, StoredMessage};

/// One shard's store and what it held.
pub struct ShardRecovery {
    pub store: Arc<ShardStore>,
    pub restored: Restored,
    /// Where the journal's entry numbers and epochs continue.
    pub max_seq: u64,
    pub max_epoch: u64,
}

/// Opens the `shard_count` stores and places what they hold. Store files of shards beyond
/// `shard_count` (the configuration shrank) are read too, their sessions moved into this
/// run's stores, and then removed.
pub fn recover(config: &Config, shard_count: usize) -> Result<Vec<ShardRecovery>, StartError> {
    let dir = config.store_path(0).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StartError::Store(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut stores = Vec::new();
    let mut contents = Vec::new();
    for index in 0.. {
        let path = config.store_path(index);
        if index >= shard_count && !path.exists() {
            break;
        }
        let store = ShardStore::open(&path).map_err(|e| StartError::Store(e.to_string()))?;
        let recovered = store.recover().map_err(|e| StartError::Store(e.to_string()))?;
        for damage in &recovered.damaged {
            tracing::error!(store = %path.display(), "skipped a damaged record: {damage}");
        }
        stores.push(store);
        contents.push(recovered);
    }
    let max_epoch = contents.iter().map(|c| c.max_epoch).max().unwrap_or(0);
    let mut cleanup: Vec<Vec<StoreOp>> = stores.iter().map(|_| Vec::new()).collect();

    // The newest incarnation of each session wins; the others are forgotten.
    let mut newest: AHashMap<ByteString, (usize, u64)> = AHashMap::new();
    for (index, recovered) in contents.iter().enumerate() {
        for found in &recovered.sessions {
            let candidate = (index, found.session.epoch);
            let best = newest.entry(found.session.client_id.clone()).or_insert(candidate);
            if candidate.1 > best.1 {
                *best = candidate;
            }
        }
    }
    // The newest record of each retained topic wins, deletions included.
    let mut retained: AHashMap<ByteString, (u64, Option<StoredMessage>)> = AHashMap::new();
    for recovered in &mut contents {
        for (topic, stamp, message) in recovered.retained.drain(..) {
            let newer = retained.get(&topic).is_none_or(|(best, _)| stamp > *best);
            if newer {
                retained.insert(topic, (stamp, message));
            }
        }
    }
    for (index, ops) in cleanup.iter_mut().enumerate() {
        // Every shard's retained records are rewritten as the settled set: shard 0 keeps it.
        for topic in retained.keys() {
            ops.push(StoreOp::DeleteRetained { topic: topic.clone() });
        }
        if index == 0 {
            for (topic, (stamp, message)) in &retained {
                let Some(message) = message else { continue };
                let message = Some(Box::new(message.clone()));
                ops.push(StoreOp::PutRetained { topic: topic.clone(), stamp: *stamp, message });
            }
        }
    }
    let retained: Vec<_> =
        retained.into_values().filter_map(|(_, message)| message.map(restored_message)).collect();

    let mut shards: Vec<Restored> = (0..shard_count).map(|_| Restored::default()).collect();
    for (index, recovered) in contents.into_iter().enumerate() {
        for found in recovered.sessions {
            let client_id = found.session.client_id.clone();
            if newest.get(&client_id) != Some(&(index, found.session.epoch)) {
                let epoch = found.session.epoch;
                cleanup[index].push(StoreOp::ForgetSession { client_id, epoch });
                continue;
            }
            let home = index % shard_count;
            if home != index {
                // From a store this run does not have: written into its new home's store.
                cleanup[home].extend(rewrite(&found));
            }
            let owner = registry_owner(&client_id, shard_count).index();
            shards[owner].registered.push((client_id, ShardId::new(home)));
            shards[home].sessions.push(found);
        }
    }
    place_interest(&mut shards);
    for (index, ops) in cleanup.into_iter().enumerate() {
        stores[index].apply(ops, true).map_err(|e| StartError::Store(e.to_string()))?;
    }
    let mut recoveries = Vec::with_capacity(shard_count);
    for (index, store) in stores.into_iter().enumerate() {
        if index >= shard_count {
            let path = store.path().to_path_buf();
            drop(store);
            std::fs::remove_file(&path)
                .map_err(|e| StartError::Store(format!("cannot remove {}: {e}", path.display())))?;
            continue;
        }
        let max_seq = shards[index].sessions.iter().flat_map(|s| &s.entries).map(|e| e.seq).max();
        recoveries.push(ShardRecovery {
            store: Arc::new(store),
            restored: std::mem::take(&mut shards[index]),
            max_seq: max_seq.unwrap_or(0),
            max_epoch,
        });
    }
    for recovery in &mut recoveries {
        recovery.restored.retained = retained.clone();
    }
    let sessions: usize = recoveries.iter().map(|r| r.restored.sessions.len()).sum();
    tracing::info!(sessions, retained = retained.len(), "recovered from the persistence store");
    Ok(recoveries)
}

/// The records that recreate a recovered session in another store.
fn rewrite(found: &crate::store::RecoveredSession) -> Vec<StoreOp> {
    let (client_id, epoch) = (found.session.client_id.clone(), found.session.epoch);
    let mut ops = vec![StoreOp::PutSession(Box::new(found.session.clone()))];
    for entry in &found.entries {
        let entry = Box::new(entry.clone());
        ops.push(StoreOp::PutEntry { client_id: client_id.clone(), epoch, entry });
    }
    for packet_id in &found.incoming {
        ops.push(StoreOp::PutIncoming {
            client_id: client_id.clone(),
            epoch,
            packet_id: *packet_id,
        });
    }
    ops
}

/// Each shard's interest replica and shared groups learn what the other shards' restored
/// sessions subscribe, before any message is routed.
fn place_interest(shards: &mut [Restored]) {
    let mut subscribed = Vec::new();
    for (home, restored) in shards.iter().enumerate() {
        for found in &restored.sessions {
            for (filter, _, _) in &found.session.subscriptions {
                subscribed.push((home, filter.clone()));
            }
        }
    }
    for (home, filter) in subscribed {
        for (index, restored) in shards.iter_mut().enumerate() {
            if index == home {
                continue;
            }
            let home = ShardId::new(home);
            match filter.shared() {
                Some(share) => {
                    restored.remote_shared.push((share.filter.into(), share.group.into(), home))
                }
                None => restored.remote_interest.push((ByteString::from(&*filter), home)),
            }
        }
    }
}
