//! Shared subscriptions (`$share/{group}/{filter}`): which members of each group live on this
//! shard, which other shards have members, and the round-robin choice of who gets a message.
//! Each message goes to one member per group: the publishing shard picks a shard, that shard
//! picks one of its members. Owns no sessions and sends nothing; the shard acts on its answers.

use std::cell::Cell;

use ahash::AHashMap;
use bytestring::ByteString;

use super::messages::{ShardId, ShardSet};
use super::session::Subscription;
use crate::protocol::trie::TopicTrie;

#[derive(Default)]
struct Group {
    /// Members on this shard: client id and subscription.
    local: Vec<(ByteString, Subscription)>,
    /// Other shards with at least one member.
    remote: ShardSet,
    /// Round-robin positions: over shards, then over local members.
    shard_turn: Cell<usize>,
    member_turn: Cell<usize>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    fn pick_local(&self) -> Option<&(ByteString, Subscription)> {
        let turn = self.member_turn.get();
        self.member_turn.set(turn.wrapping_add(1));
        self.local.get(turn % self.local.len().max(1))
    }
}

/// Where one message goes for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub filter: ByteString,
    pub group: ByteString,
    pub shard: ShardId,
}

/// The groups sharing one filter, with the filter itself (the trie's visitor sees only values).
struct Groups {
    filter: ByteString,
    by_name: AHashMap<ByteString, Group>,
}

impl Groups {
    fn new(filter: &str) -> Self {
        Groups { filter: filter.into(), by_name: AHashMap::new() }
    }
}

#[derive(Default)]
pub struct SharedSubscriptions {
    /// Filter (without the `$share/{group}/` prefix) -> its groups.
    trie: TopicTrie<Groups>,
}

impl SharedSubscriptions {
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// Adds or updates a local member; true when it is the group's first on this shard.
    pub fn add_member(
        &mut self,
        filter: &str,
        group: &str,
        client_id: &ByteString,
        subscription: Subscription,
    ) -> bool {
        let group = self
            .trie
            .entry(filter, || Groups::new(filter))
            .by_name
            .entry(group.into())
            .or_default();
        let first = group.local.is_empty();
        match group.local.iter_mut().find(|(c, _)| c == client_id) {
            Some((_, existing)) => *existing = subscription,
            None => group.local.push((client_id.clone(), subscription)),
        }
        first
    }

    /// Removes a local member; true when the group has no member left on this shard.
    pub fn remove_member(&mut self, filter: &str, group: &str, client_id: &ByteString) -> bool {
        let Some(groups) = self.trie.get_mut(filter) else { return false };
        let Some(entry) = groups.by_name.get_mut(group) else { return false };
        let before = entry.local.len();
        entry.local.retain(|(c, _)| c != client_id);
        let emptied = before > 0 && entry.local.is_empty();
        self.prune(filter, group);
        emptied
    }

    /// Another shard gained its first or lost its last member of a group.
    pub fn set_remote(&mut self, filter: &str, group: &str, shard: ShardId, has_members: bool) {
        if has_members {
            let groups = self.trie.entry(filter, || Groups::new(filter));
            groups.by_name.entry(group.into()).or_default().remote.insert(shard);
        } else if let Some(entry) = self.trie.get_mut(filter).and_then(|g| g.by_name.get_mut(group))
        {
            entry.remote.remove(shard);
            self.prune(filter, group);
        }
    }

    fn prune(&mut self, filter: &str, group: &str) {
        let Some(groups) = self.trie.get_mut(filter) else { return };
        if groups.by_name.get(group).is_some_and(Group::is_empty) {
            groups.by_name.remove(group);
        }
        if groups.by_name.is_empty() {
            self.trie.remove(filter);
        }
    }

    /// For each group with a filter matching `topic`, the shard that gets the message, taking
    /// turns among the shards with members (this one included when it has members).
    pub fn pick_shards(&self, topic: &str, this_shard: ShardId) -> Vec<Pick> {
        let mut picks = Vec::new();
        self.trie.matches(topic, |groups| {
            for (name, group) in &groups.by_name {
                let mut shards = group.remote;
                if !group.local.is_empty() {
                    shards.insert(this_shard);
                }
                let count = shards.len();
                if count == 0 {
                    continue;
                }
                let turn = group.shard_turn.get();
                group.shard_turn.set(turn.wrapping_add(1));
                let Some(shard) = shards.iter().nth(turn % count) else { continue };
                picks.push(Pick { filter: groups.filter.clone(), group: name.clone(), shard });
            }
        });
        picks
    }

    /// Whether some group with members on any shard has a filter matching `topic` (without
    /// taking a turn, unlike `pick_shards`).
    pub fn any_group_matches(&self, topic: &str) -> bool {
        let mut any = false;
        self.trie.matches(topic, |groups| {
            any |= groups.by_name.values().any(|g| !g.remote.is_empty() || !g.local.is_empty());
        });
        any
    }

    /// A member on this shard for a message of `group` on `filter`, taking turns.
    pub fn pick_member(&self, filter: &str, group: &str) -> Option<(ByteString, Subscription)> {
        self.trie.get(filter)?.by_name.get(group)?.pick_local().cloned()
    }

    /// Other shards with members, to forward to when this shard has none left.
    pub fn remote_shards(&self, filter: &str, group: &str) -> ShardSet {
        self.trie
            .get(filter)
            .and_then(|g| g.by_name.get(group))
            .map_or_else(ShardSet::default, |g| g.remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SubscriptionOptions;

    fn member() -> Subscription {
        Subscription { options: SubscriptionOptions::default(), id: None }
    }

    #[test]
    fn turns_go_round_shards_and_members() {
        let mut shared = SharedSubscriptions::default();
        assert!(shared.add_member("a/+", "g", &"c1".into(), member()));
        assert!(!shared.add_member("a/+", "g", &"c2".into(), member()));
        shared.set_remote("a/+", "g", ShardId::new(3), true);
        let this = ShardId::new(0);
        let shards: Vec<usize> =
            (0..4).map(|_| shared.pick_shards("a/x", this)[0].shard.index()).collect();
        assert_eq!(shards, [0, 3, 0, 3]);
        let members: Vec<ByteString> =
            (0..3).map(|_| shared.pick_member("a/+", "g").unwrap().0).collect();
        assert_eq!(members, ["c1", "c2", "c1"]);
        assert_eq!(shared.pick_shards("a/x", this)[0].filter, "a/+");
    }

    #[test]
    fn groups_disappear_with_their_last_member() {
        let mut shared = SharedSubscriptions::default();
        shared.add_member("t", "g", &"c".into(), member());
        let other = ShardId::new(1);
        shared.set_remote("t", "g", other, true);
        assert!(shared.remove_member("t", "g", &"c".into()));
        assert_eq!(shared.pick_shards("t", ShardId::new(0))[0].shard, other);
        shared.set_remote("t", "g", other, false);
        assert!(shared.is_empty());
    }
}
