//! Persistence (`persistence true`): what a restart after any crash must find again.
//!
//! Each shard owns one store file (redb: one file, copy-on-write B-trees, checksummed commits;
//! chosen over fjall by measurement, see docs/ARCHITECTURE.md). A shard never touches another
//! shard's file while running: it collects `StoreOp`s, and its store task commits them in one
//! transaction per batch (group commit) on the shard's blocking thread, off the executor.
//!
//! Start-up reads every shard's file before any listener opens (`recover`), keeps the newest
//! incarnation of each session (see `StoredSession::epoch`) and the newest record of each
//! retained topic, and deletes what they superseded.

mod record;

use std::path::{Path, PathBuf};

use bytestring::ByteString;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::protocol::PacketId;
use record::{
    decode_entry, decode_retained, decode_session, decode_stage, encode_entry, encode_retained,
    encode_session, encode_stage, numbered_key, parse_numbered_key, session_prefix, FORMAT_VERSION,
};
pub use record::{RouteTag, Stage, StoredEntry, StoredMessage, StoredSession, StoredSource};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Message bodies queued or in flight, by (client, epoch, seq): written once.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// The delivery stage of each entry, same keys: rewritten as PUBLISH, PUBREC, PUBREL go by.
const STAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stages");
/// Incoming QoS 2 packet ids routed but not yet released, by (client, epoch, packet id): the
/// `RouteTag` of their routing.
const INCOMING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("incoming");
/// Each session's mark per routing shard (`RouteTag`), by (client, epoch, routing shard).
const MARKS: TableDefinition<&[u8], u64> = TableDefinition::new("marks");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// One change to a shard's store.
#[derive(Debug)]
pub enum StoreOp {
    PutSession(Box<StoredSession>),
    /// Removes the session's record if its epoch is at most `epoch`, and every entry and
    /// incoming id of incarnations up to `epoch`.
    ForgetSession {
        client_id: ByteString,
        epoch: u64,
    },
    PutEntry {
        client_id: ByteString,
        epoch: u64,
        entry: Box<StoredEntry>,
    },
    SetStage {
        client_id: ByteString,
        epoch: u64,
        seq: u64,
        stage: Stage,
    },
    DeleteEntry {
        client_id: ByteString,
        epoch: u64,
        seq: u64,
    },
    PutIncoming {
        client_id: ByteString,
        epoch: u64,
        packet_id: PacketId,
        tag: RouteTag,
    },
    DeleteIncoming {
        client_id: ByteString,
        epoch: u64,
        packet_id: PacketId,
    },
    /// `stamp` orders records of one topic written by different shards; `None` records a
    /// deletion (a tombstone, until start-up settles the topic).
    PutRetained {
        topic: ByteString,
        stamp: u64,
        message: Option<Box<StoredMessage>>,
    },
    /// Removes a topic's record, tombstone or not (start-up, once settled).
    DeleteRetained {
        topic: ByteString,
    },
    /// The session has taken the messages that `shard` routed up to `number` (`RouteTag`).
    SetMark {
        client_id: ByteString,
        epoch: u64,
        shard: u16,
        number: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the persistence store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the persistence store {path} has format {found}, this Culex reads format {expected}")]
    Format { path: PathBuf, found: u64, expected: u64 },
    #[error("persistence store {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// A session as start-up found it: its subscriptions, its messages in delivery order, and
/// the QoS 2 ids its client has yet to release, with how each was routed.
#[derive(Debug)]
pub struct RecoveredSession {
    pub session: StoredSession,
    pub entries: Vec<StoredEntry>,
    pub incoming: Vec<(PacketId, RouteTag)>,
    /// Its mark per routing shard.
    pub marks: Vec<(u16, u64)>,
}

/// What one store file holds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<(ByteString, u64, Option<StoredMessage>)>,
    /// Entry numbers, epochs and route numbers in use: new ones must be larger.
    pub max_seq: u64,
    pub max_epoch: u64,
    pub max_route_number: u64,
    /// Records that could not be read, skipped: "key: why".
    pub damaged: Vec<String>,
}

pub struct ShardStore {
    db: Database,
    path: PathBuf,
}

impl ShardStore {
    /// Opens (or creates) a shard's store file. A truncated or corrupt file is an error that
    /// names it: the broker does not start on a store it cannot read.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |reason: String| StoreError::Open { path: path.to_path_buf(), reason };
        let db = Database::create(path).map_err(|e| fail(e.to_string()))?;
        let store = ShardStore { db, path: path.to_path_buf() };
        let write = store.db.begin_write().map_err(|e| fail(e.to_string()))?;
        {
            let mut meta = write.open_table(META).map_err(|e| fail(e.to_string()))?;
            let found = meta.get("format").map_err(|e| fail(e.to_string()))?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(|e| fail(e.to_string()))?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::Format {
                        path: path.to_path_buf(),
                        found,
                        expected: FORMAT_VERSION,
                    })
                }
            }
            // Every table exists from the start, so reads never meet a missing one.
            write.open_table(SESSIONS).map_err(|e| fail(e.to_string()))?;
            write.open_table(ENTRIES).map_err(|e| fail(e.to_string()))?;
            write.open_table(STAGES).map_err(|e| fail(e.to_string()))?;
            write.open_table(INCOMING).map_err(|e| fail(e.to_string()))?;
            write.open_table(MARKS).map_err(|e| fail(e.to_string()))?;
            write.open_table(RETAINED).map_err(|e| fail(e.to_string()))?;
        }
        write.commit().map_err(|e| fail(e.to_string()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), reason: error.to_string() }
    }

    /// Reads everything back. A record that cannot be decoded is reported and skipped; the
    /// rest is still read.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let fail = |e: redb::Error| self.io_error(e);
        let read = self.db.begin_read().map_err(|e| fail(e.into()))?;
        let mut recovered = Recovered::default();
        let sessions = read.open_table(SESSIONS).map_err(|e| fail(e.into()))?;
        let mut by_prefix = std::collections::BTreeMap::new();
        for row in sessions.iter().map_err(|e| fail(e.into()))? {
            let (client_id, value) = row.map_err(|e| fail(e.into()))?;
            match decode_session(client_id.value(), value.value()) {
                Ok(session) => {
                    recovered.max_epoch = recovered.max_epoch.max(session.epoch);
                    let prefix = session_prefix(&session.client_id, session.epoch);
                    by_prefix.insert(
                        prefix,
                        RecoveredSession {
                            session,
                            entries: Vec::new(),
                            incoming: Vec::new(),
                            marks: Vec::new(),
                        },
                    );
                }
                Err(e) => recovered.damaged.push(format!("session {:?}: {e}", client_id.value())),
            }
        }
        let entries = read.open_table(ENTRIES).map_err(|e| fail(e.into()))?;
        let stages = read.open_table(STAGES).map_err(|e| fail(e.into()))?;
        for row in entries.iter().map_err(|e| fail(e.into()))? {
            let (key, value) = row.map_err(|e| fail(e.into()))?;
            let Some((client_id, epoch, seq)) = parse_numbered_key(key.value()) else {
                recovered.damaged.push(format!("entry key {:?}: unreadable", key.value()));
                continue;
            };
            recovered.max_seq = recovered.max_seq.max(seq);
            let Some(owner) = by_prefix.get_mut(&session_prefix(client_id, epoch)) else {
                continue; // an incarnation that ended: removed by `settle`
            };
            let stage = match stages.get(key.value()).map_err(|e| fail(e.into()))? {
                Some(stage) => decode_stage(stage.value()),
                None => Ok(Stage::Queued),
            };
            match stage.and_then(|stage| decode_entry(seq, value.value(), stage)) {
                Ok(entry) => owner.entries.push(entry),
                Err(e) => recovered.damaged.push(format!("entry {client_id:?} #{seq}: {e}")),
            }
        }
        let incoming = read.open_table(INCOMING).map_err(|e| fail(e.into()))?;
        for row in incoming.iter().map_err(|e| fail(e.into()))? {
            let (key, value) = row.map_err(|e| fail(e.into()))?;
            let Some(tag) = RouteTag::decode(value.value()) else {
                recovered.damaged.push(format!("incoming {:?}: unreadable", key.value()));
                continue;
            };
            recovered.max_route_number = recovered.max_route_number.max(tag.number);
            let parsed = parse_numbered_key(key.value());
            let owner = parsed.and_then(|(c, e, id)| {
                let id = PacketId::new(u16::try_from(id).ok()?)?;
                Some((by_prefix.get_mut(&session_prefix(c, e))?, id))
            });
            if let Some((owner, id)) = owner {
                owner.incoming.push((id, tag));
            }
        }
        let marks = read.open_table(MARKS).map_err(|e| fail(e.into()))?;
        for row in marks.iter().map_err(|e| fail(e.into()))? {
            let (key, number) = row.map_err(|e| fail(e.into()))?;
            let number = number.value();
            recovered.max_route_number = recovered.max_route_number.max(number);
            let parsed = parse_numbered_key(key.value());
            let owner = parsed.and_then(|(c, e, shard)| {
                Some((by_prefix.get_mut(&session_prefix(c, e))?, u16::try_from(shard).ok()?))
            });
            if let Some((owner, shard)) = owner {
                owner.marks.push((shard, number));
            }
        }
        let retained = read.open_table(RETAINED).map_err(|e| fail(e.into()))?;
        for row in retained.iter().map_err(|e| fail(e.into()))? {
            let (topic, value) = row.map_err(|e| fail(e.into()))?;
            match decode_retained(value.value()) {
                Ok((stamp, message)) => {
                    recovered.retained.push((topic.value().into(), stamp, message))
                }
                Err(e) => recovered.damaged.push(format!("retained {:?}: {e}", topic.value())),
            }
        }
        recovered.sessions = by_prefix.into_values().collect();
        Ok(recovered)
    }

    /// Commits a batch of changes in one transaction: durable (synced to disk, with everything
    /// committed before it), or not (kept in this process until the next durable commit).
    pub fn apply(&self, ops: Vec<StoreOp>, durable: bool) -> Result<(), StoreError> {
        let mut write = self.db.begin_write().map_err(|e| self.io_error(e))?;
        if !durable {
            write.set_durability(redb::Durability::None).map_err(|e| self.io_error(e))?;
        }
        self.write_ops(&write, ops).map_err(|e| self.io_error(e))?;
        write.commit().map_err(|e| self.io_error(e))
    }

    fn write_ops(
        &self,
        write: &redb::WriteTransaction,
        ops: Vec<StoreOp>,
    ) -> Result<(), redb::Error> {
        let mut sessions = write.open_table(SESSIONS)?;
        let mut entries = write.open_table(ENTRIES)?;
        let mut stages = write.open_table(STAGES)?;
        let mut incoming = write.open_table(INCOMING)?;
        let mut marks = write.open_table(MARKS)?;
        let mut retained = write.open_table(RETAINED)?;
        for op in ops {
            match op {
                StoreOp::PutSession(session) => {
                    sessions.insert(&*session.client_id, &encode_session(&session)[..])?;
                }
                StoreOp::ForgetSession { client_id, epoch } => {
                    let stored = sessions
                        .get(&*client_id)?
                        .and_then(|v| decode_session(&client_id, v.value()).ok())
                        .map(|s| s.epoch);
                    if stored.is_none_or(|stored| stored <= epoch) {
                        sessions.remove(&*client_id)?;
                    }
                    let start = session_prefix(&client_id, 0);
                    let end = session_prefix(&client_id, epoch.saturating_add(1));
                    let range = &start[..]..&end[..];
                    entries.retain_in(range.clone(), |_, _| false)?;
                    stages.retain_in(range.clone(), |_, _| false)?;
                    incoming.retain_in(range.clone(), |_, _| false)?;
                    marks.retain_in(range, |_, _| false)?;
                }
                StoreOp::PutEntry { client_id, epoch, entry } => {
                    let key = numbered_key(&client_id, epoch, entry.seq);
                    entries.insert(&key[..], &encode_entry(&entry)[..])?;
                    if entry.stage != Stage::Queued {
                        stages.insert(&key[..], &encode_stage(entry.stage)[..])?;
                    }
                }
                StoreOp::SetStage { client_id, epoch, seq, stage } => {
                    let key = numbered_key(&client_id, epoch, seq);
                    stages.insert(&key[..], &encode_stage(stage)[..])?;
                }
                StoreOp::DeleteEntry { client_id, epoch, seq } => {
                    let key = numbered_key(&client_id, epoch, seq);
                    entries.remove(&key[..])?;
                    stages.remove(&key[..])?;
                }
                StoreOp::PutIncoming { client_id, epoch, packet_id, tag } => {
                    let key = numbered_key(&client_id, epoch, u64::from(packet_id.get()));
                    incoming.insert(&key[..], &tag.encode()[..])?;
                }
                StoreOp::DeleteIncoming { client_id, epoch, packet_id } => {
                    let key = numbered_key(&client_id, epoch, u64::from(packet_id.get()));
                    incoming.remove(&key[..])?;
                }
                StoreOp::PutRetained { topic, stamp, message } => {
                    let value = encode_retained(stamp, message.as_deref());
                    retained.insert(&*topic, &value[..])?;
                }
                StoreOp::DeleteRetained { topic } => {
                    retained.remove(&*topic)?;
                }
                StoreOp::SetMark { client_id, epoch, shard, number } => {
                    let key = numbered_key(&client_id, epoch, u64::from(shard));
                    marks.insert(&key[..], number)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, Publish, QoS, TopicName};
    use bytes::Bytes;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("culex-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("shard0")
    }

    fn entry(seq: u64, stage: Stage) -> Box<StoredEntry> {
        Box::new(StoredEntry {
            seq,
            message: StoredMessage {
                publish: Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: TopicName::new("t").unwrap(),
                    packet_id: PacketId::new(1),
                    properties: Properties::default(),
                    payload: Bytes::from(seq.to_string()),
                },
                publisher: "p".into(),
                expires_at_ms: None,
                source: StoredSource::Unknown,
            },
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            stage,
        })
    }

    fn session(epoch: u64) -> StoredSession {
        StoredSession {
            client_id: "c".into(),
            epoch,
            expiry_secs: 60,
            subscriptions: Vec::new(),
            delayed_will: None,
        }
    }

    #[test]
    fn what_is_applied_is_recovered_in_order_and_forgetting_removes_it() {
        let path = temp_path("apply");
        let store = ShardStore::open(&path).unwrap();
        let client_id: ByteString = "c".into();
        let mut ops = vec![StoreOp::PutSession(Box::new(session(1)))];
        for seq in [3, 1, 2] {
            ops.push(StoreOp::PutEntry {
                client_id: client_id.clone(),
                epoch: 1,
                entry: entry(seq, Stage::Queued),
            });
        }
        let id = PacketId::new(7).unwrap();
        ops.push(StoreOp::SetStage {
            client_id: client_id.clone(),
            epoch: 1,
            seq: 1,
            stage: Stage::AwaitPubAck(id),
        });
        ops.push(StoreOp::DeleteEntry { client_id: client_id.clone(), epoch: 1, seq: 2 });
        let tag = RouteTag { shard: 1, number: 40 };
        ops.push(StoreOp::PutIncoming {
            client_id: client_id.clone(),
            epoch: 1,
            packet_id: id,
            tag,
        });
        for (shard, number) in [(1, 41), (0, 7)] {
            ops.push(StoreOp::SetMark { client_id: client_id.clone(), epoch: 1, shard, number });
        }
        store.apply(ops, true).unwrap();
        drop(store);

        let store = ShardStore::open(&path).unwrap();
        let recovered = store.recover().unwrap();
        assert!(recovered.damaged.is_empty());
        let [found] = &recovered.sessions[..] else { panic!("{recovered:?}") };
        let seqs: Vec<_> = found.entries.iter().map(|e| (e.seq, e.stage)).collect();
        assert_eq!(seqs, [(1, Stage::AwaitPubAck(id)), (3, Stage::Queued)]);
        assert_eq!(found.incoming, [(id, tag)]);
        assert_eq!(found.marks, [(0, 7), (1, 41)]);
        assert_eq!(
            (recovered.max_seq, recovered.max_epoch, recovered.max_route_number),
            (3, 1, 41)
        );

        // A newer incarnation elsewhere: forgetting epoch 1 removes everything of it.
        store.apply(vec![StoreOp::ForgetSession { client_id, epoch: 1 }], true).unwrap();
        let recovered = store.recover().unwrap();
        assert!(recovered.sessions.is_empty());
    }

    #[test]
    fn a_truncated_store_is_an_error_naming_the_file() {
        let path = temp_path("truncated");
        let store = ShardStore::open(&path).unwrap();
        store.apply(vec![StoreOp::PutSession(Box::new(session(1)))], true).unwrap();
        drop(store);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        let error = ShardStore::open(&path).err().expect("a truncated store must not open");
        assert!(error.to_string().contains(&path.display().to_string()), "{error}");
    }
}
