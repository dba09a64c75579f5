//! The sans-I/O core of a shard: its state and the rules it applies to what clients and other
//! shards send it. Nothing here awaits or touches a socket; `crate::runtime` drives it, and a
//! unit test can drive it without either.

pub mod counters;
pub mod journal;
mod latch;
pub mod messages;
pub mod outbox;
pub mod session;
mod shard;
mod shared;
pub mod signal;
pub mod trie;

pub use shard::{registry_owner, Origin, Restored, Shard};
