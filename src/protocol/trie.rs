//! The subscription trie: topic filters, level by level, each node holding a value (the local
//! subscribers, or the shards with interest). Matching a topic name walks only the branches the
//! name can reach: the exact level, `+` and `#`. It owns no I/O and knows nothing of sessions.

use ahash::AHashMap;

/// A trie of topic filters with a value of type `T` at every filter that was inserted.
#[derive(Debug)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    value: Option<T>,
    children: Children<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { value: None, children: Children::Few(Vec::new()) }
    }
}

/// Children a node keeps in a list, scanned, before it takes a map.
const SCANNED_MAX: usize = 8;

/// A node's children by level name. Most nodes have one child or a few (`fleet/<id>/cmd`: one
/// node of many children, each with one): those keep an exactly sized list, scanned, and only
/// a node with more than `SCANNED_MAX` takes a hash map. A map for every node cost 3.0 KB per
/// subscription of `dev/<i>/cmd/+` (100,000 of them, two shards: the subscribers' trie and the
/// other shard's interest replica; Mosquitto 1.4 KB), its smallest table holding four nodes.
#[derive(Debug)]
enum Children<T> {
    Few(Vec<(Box<str>, Node<T>)>),
    Many(Box<AHashMap<Box<str>, Node<T>>>),
}

impl<T> Children<T> {
    fn get(&self, level: &str) -> Option<&Node<T>> {
        match self {
            Children::Few(few) => few.iter().find(|(name, _)| **name == *level).map(|(_, n)| n),
            Children::Many(many) => many.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match self {
            Children::Few(few) => few.iter_mut().find(|(name, _)| **name == *level).map(|(_, n)| n),
            Children::Many(many) => many.get_mut(level),
        }
    }

    /// The child at `level`, made empty if there is none.
    #[expect(clippy::indexing_slicing, reason = "`at` is found in `few`, or the index just pushed")]
    fn get_or_default(&mut self, level: &str) -> &mut Node<T> {
        if let Children::Few(few) = self {
            if few.len() >= SCANNED_MAX && !few.iter().any(|(name, _)| **name == *level) {
                *self = Children::Many(Box::new(few.drain(..).collect()));
            }
        }
        match self {
            Children::Few(few) => {
                let at = match few.iter().position(|(name, _)| **name == *level) {
                    Some(at) => at,
                    None => {
                        // Exactly sized: a list doubled would leave most nodes half empty.
                        few.reserve_exact(1);
                        few.push((level.into(), Node::default()));
                        few.len() - 1
                    }
                };
                &mut few[at].1
            }
            Children::Many(many) => many.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) -> Option<Node<T>> {
        match self {
            Children::Few(few) => {
                let at = few.iter().position(|(name, _)| **name == *level)?;
                // Not swapped out: the others keep their order (see `matched_by`).
                Some(few.remove(at).1)
            }
            Children::Many(many) => many.remove(level),
        }
    }

    fn len(&self) -> usize {
        match self {
            Children::Few(few) => few.len(),
            Children::Many(many) => many.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Node<T>)> {
        let (few, many) = match self {
            Children::Few(few) => (Some(few.iter().map(|(name, node)| (&**name, node))), None),
            Children::Many(many) => (None, Some(many.iter().map(|(name, node)| (&**name, node)))),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    fn values(&self) -> impl Iterator<Item = &Node<T>> {
        self.iter().map(|(_, node)| node)
    }

    /// Takes every child out.
    fn drain(&mut self) -> Vec<Node<T>> {
        match std::mem::replace(self, Children::Few(Vec::new())) {
            Children::Few(few) => few.into_iter().map(|(_, node)| node).collect(),
            Children::Many(many) => many.into_values().collect(),
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie { root: Node::default(), len: 0 }
    }
}

/// Dismantled with a loop: the default drop would recurse once per level.
impl<T> Drop for TopicTrie<T> {
    fn drop(&mut self) {
        let mut nodes = vec![std::mem::take(&mut self.root)];
        while let Some(mut node) = nodes.pop() {
            nodes.extend(node.children.drain());
        }
    }
}

impl<T> TopicTrie<T> {
    /// Number of filters holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `filter`, created with `default` if the filter is new.
    pub fn entry(&mut self, filter: &str, default: impl FnOnce() -> T) -> &mut T {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_default(level);
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(default)
    }

    pub fn get(&self, filter: &str) -> Option<&T> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut T> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.value.as_mut()
    }

    /// Removes the value at `filter` and prunes nodes left empty. A loop, not recursion: a
    /// client chooses how deep a filter goes (within `TOPIC_LEVELS_MAX`).
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        // The deepest node on the path that stays (it holds a value or another branch): the
        // branch below it holds nothing but the removed value, and goes whole.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if node.value.is_some() || node.children.len() > 1 {
                keep_depth = depth;
            }
            node = node.children.get(level)?;
        }
        node.value.as_ref()?;
        let removed = if node.children.is_empty() {
            let mut levels = filter.split('/');
            let mut kept = &mut self.root;
            for level in levels.by_ref().take(keep_depth) {
                // Invariant: the walk above found every level of `filter`.
                kept = kept.children.get_mut(level)?;
            }
            let mut branch = kept.children.remove(levels.next()?)?;
            for level in levels {
                branch = branch.children.remove(level)?;
            }
            branch.value
        } else {
            let mut node = &mut self.root;
            for level in filter.split('/') {
                node = node.children.get_mut(level)?;
            }
            node.value.take()
        };
        debug_assert!(removed.is_some());
        self.len -= 1;
        removed
    }

    /// Calls `visit` with the value of every filter that matches `topic` (MQTT 5.0 section
    /// 4.7): `+` matches one level, `#` the rest (including the parent level itself), and a
    /// topic starting with `$` is not matched by a filter starting with a wildcard
    /// [MQTT-4.7.2-1]. Depth first with a stack of its own rather than recursion: the topic's
    /// depth is the publisher's choice.
    pub fn matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a T)) {
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        // (node, how many levels it has consumed, whether wildcards may match at it)
        let mut pending: smallvec::SmallVec<[(&Node<T>, usize, bool); 16]> =
            smallvec::smallvec![(&self.root, 0, !dollar)];
        while let Some((node, depth, wildcards)) = pending.pop() {
            if wildcards {
                if let Some(value) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                    visit(value);
                }
            }
            let Some(level) = levels.get(depth) else {
                if let Some(value) = &node.value {
                    visit(value);
                }
                continue;
            };
            // Pushed in reverse, so the exact level is walked before `+`.
            if wildcards {
                if let Some(child) = node.children.get("+") {
                    pending.push((child, depth + 1, true));
                }
            }
            if let Some(child) = node.children.get(level) {
                pending.push((child, depth + 1, true));
            }
        }
    }

    /// Calls `visit` with the value at every topic name the trie holds that `filter` matches:
    /// the reverse of `matches`, for a trie of topic names (the retained store) and one new
    /// subscription. It walks only the branches the filter reaches, so a subscription costs
    /// what it matches, not the size of the store. A loop, not recursion.
    pub fn matched_by<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a T)) {
        let levels: smallvec::SmallVec<[&str; 8]> = filter.split('/').collect();
        // (node, levels of the filter consumed; `None`: below a `#`, everything matches)
        let mut pending: smallvec::SmallVec<[(&Node<T>, Option<usize>); 16]> =
            smallvec::smallvec![(&self.root, Some(0))];
        while let Some((node, depth)) = pending.pop() {
            // Children go on the stack last first, so that they are visited in the order they
            // were made, each before its own children: a wildcard subscriber gets retained
            // messages in the order Mosquitto sends them (its topic tree keeps that order).
            let above = pending.len();
            let Some(depth) = depth else {
                if let Some(value) = &node.value {
                    visit(value);
                }
                pending.extend(node.children.values().map(|child| (child, None)));
                pending.get_mut(above..).unwrap_or_default().reverse();
                continue;
            };
            // A filter starting with a wildcard does not match a topic starting with `$`
            // [MQTT-4.7.2-1].
            let reachable = |name: &str| depth > 0 || !name.starts_with('$');
            match levels.get(depth).copied() {
                None => {
                    if let Some(value) = &node.value {
                        visit(value);
                    }
                }
                Some("#") => {
                    // `#` matches the parent level too: `sport/#` matches `sport`.
                    if depth > 0 {
                        if let Some(value) = &node.value {
                            visit(value);
                        }
                    }
                    let children = node.children.iter().filter(|(name, _)| reachable(name));
                    pending.extend(children.map(|(_, child)| (child, None)));
                    pending.get_mut(above..).unwrap_or_default().reverse();
                }
                Some("+") => {
                    let children = node.children.iter().filter(|(name, _)| reachable(name));
                    pending.extend(children.map(|(_, child)| (child, Some(depth + 1))));
                    pending.get_mut(above..).unwrap_or_default().reverse();
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        pending.push((child, Some(depth + 1)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::filter_matches;
    use proptest::prelude::*;

    fn matched(trie: &TopicTrie<String>, topic: &str) -> Vec<String> {
        let mut found = Vec::new();
        trie.matches(topic, |v| found.push(v.clone()));
        found.sort();
        found
    }

    #[test]
    fn examples_from_the_spec() {
        let mut trie = TopicTrie::default();
        for f in ["sport/tennis/player1/#", "sport/#", "#", "+/+", "/+", "+", "$SYS/#", "sport/+"] {
            *trie.entry(f, String::new) = f.to_string();
        }
        assert_eq!(
            matched(&trie, "sport/tennis/player1"),
            ["#", "sport/#", "sport/tennis/player1/#"]
        );
        // "sport/#" also matches "sport" itself, and "+" matches the one level.
        assert_eq!(matched(&trie, "sport"), ["#", "+", "sport/#"]);
        assert_eq!(matched(&trie, "/finance"), ["#", "+/+", "/+"]);
        assert_eq!(matched(&trie, "$SYS/broker/uptime"), ["$SYS/#"]);
        assert_eq!(matched(&trie, "sport/"), ["#", "+/+", "sport/#", "sport/+"]);
    }

    #[test]
    fn a_node_past_the_scanned_list_takes_a_map_and_keeps_every_child() {
        let mut trie = TopicTrie::default();
        let devices = SCANNED_MAX * 3;
        for i in 0..devices {
            *trie.entry(&format!("fleet/{i}/cmd"), String::new) = format!("fleet/{i}/cmd");
        }
        *trie.entry("fleet/+/cmd", String::new) = "fleet/+/cmd".to_string();
        let fleet = trie.root.children.get("fleet").unwrap();
        assert!(matches!(fleet.children, Children::Many(_)));
        for i in 0..devices {
            let topic = format!("fleet/{i}/cmd");
            assert_eq!(matched(&trie, &topic), ["fleet/+/cmd".to_string(), topic.clone()]);
        }
        for i in (0..devices).step_by(2) {
            assert!(trie.remove(&format!("fleet/{i}/cmd")).is_some());
        }
        assert_eq!(matched(&trie, "fleet/2/cmd"), ["fleet/+/cmd"]);
        assert_eq!(matched(&trie, "fleet/3/cmd"), ["fleet/+/cmd", "fleet/3/cmd"]);
        let mut found = Vec::new();
        trie.matched_by("fleet/#", |v| found.push(v.clone()));
        assert_eq!(found.len(), devices / 2 + 1);
    }

    #[test]
    fn remove_prunes_and_counts() {
        let mut trie = TopicTrie::default();
        *trie.entry("a/b/c", || 0) += 1;
        *trie.entry("a/b", || 0) += 1;
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.remove("a/b/c"), Some(1));
        assert_eq!(trie.remove("a/b/c"), None);
        assert_eq!(trie.len(), 1);
        assert!(trie.get_mut("a/b").is_some());
        assert_eq!(trie.remove("a/b"), Some(1));
        assert!(trie.root.children.is_empty(), "empty branches are pruned");
    }

    #[test]
    fn remove_keeps_what_other_filters_share() {
        let mut trie = TopicTrie::default();
        for f in ["a/b/c/d", "a/b", "a/x/y", "a/b/c/d/e"] {
            *trie.entry(f, String::new) = f.to_string();
        }
        assert_eq!(trie.remove("a/b/c/d").as_deref(), Some("a/b/c/d"), "a node with children");
        assert_eq!(trie.remove("a/b/c/d"), None);
        assert_eq!(trie.remove("a/b/c/d/e").as_deref(), Some("a/b/c/d/e"));
        assert_eq!(trie.remove("a/b/c"), None, "pruned: nothing was there");
        assert_eq!(matched(&trie, "a/b"), ["a/b"]);
        assert_eq!(matched(&trie, "a/x/y"), ["a/x/y"]);
        assert_eq!(trie.remove("a/b").as_deref(), Some("a/b"));
        assert_eq!(trie.remove("a/x/y").as_deref(), Some("a/x/y"));
        assert!(trie.root.children.is_empty() && trie.is_empty());
    }

    /// Far deeper than any client may go: nothing recurses on depth.
    #[test]
    fn deep_filters_are_walked_without_recursion() {
        let deep = vec!["+"; 100_000].join("/");
        let topic = vec!["a"; 100_000].join("/");
        let mut trie = TopicTrie::default();
        *trie.entry(&deep, String::new) = "deep".into();
        assert_eq!(matched(&trie, &topic), ["deep"]);
        assert_eq!(trie.remove(&deep).as_deref(), Some("deep"));
        assert!(trie.root.children.is_empty());
    }

    fn arb_filter() -> impl Strategy<Value = String> {
        let level = prop_oneof!["[ab$]{0,2}", Just("+".to_string())];
        (prop::collection::vec(level, 1..5), any::<bool>()).prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_the_naive_matcher(
            filters in prop::collection::vec(arb_filter(), 0..20),
            topic in "[ab$]{0,2}(/[ab$]{0,2}){0,3}",
        ) {
            let mut trie = TopicTrie::default();
            for f in &filters {
                *trie.entry(f, String::new) = f.clone();
            }
            let mut expected: Vec<String> =
                filters.iter().filter(|f| filter_matches(f, &topic)).cloned().collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(matched(&trie, &topic), expected);
        }

        #[test]
        fn matched_by_agrees_with_the_naive_matcher(
            topics in prop::collection::vec("[ab$]{0,2}(/[ab$]{0,2}){0,4}", 0..20),
            filter in arb_filter(),
        ) {
            let mut trie = TopicTrie::default();
            for t in &topics {
                *trie.entry(t, String::new) = t.clone();
            }
            let mut found = Vec::new();
            trie.matched_by(&filter, |t| found.push(t.clone()));
            found.sort();
            let mut expected: Vec<String> =
                topics.iter().filter(|t| filter_matches(&filter, t)).cloned().collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(found, expected);
        }

        #[test]
        fn removing_leaves_what_a_fresh_trie_would_hold(
            filters in prop::collection::vec(arb_filter(), 1..20),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            topic in "[ab$]{0,2}(/[ab$]{0,2}){0,4}",
        ) {
            let mut trie = TopicTrie::default();
            let mut left: Vec<String> = Vec::new();
            for f in &filters {
                *trie.entry(f, String::new) = f.clone();
                if !left.contains(f) {
                    left.push(f.clone());
                }
            }
            for index in removed {
                let f = index.get(&filters);
                let expected = left.iter().position(|l| l == f).map(|i| left.remove(i));
                prop_assert_eq!(trie.remove(f), expected);
                prop_assert_eq!(trie.len(), left.len());
            }
            let mut expected: Vec<String> =
                left.iter().filter(|f| filter_matches(f, &topic)).cloned().collect();
            expected.sort();
            prop_assert_eq!(matched(&trie, &topic), expected);
            for f in &left {
                prop_assert!(trie.remove(f).is_some());
            }
            prop_assert!(trie.root.children.is_empty());
        }
    }
}
