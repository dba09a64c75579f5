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
    children: AHashMap<Box<str>, Node<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { value: None, children: AHashMap::new() }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie { root: Node::default(), len: 0 }
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
            node = node.children.entry(level.into()).or_default();
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

    /// Removes the value at `filter` and prunes nodes left empty.
    pub fn remove(&mut self, filter: &str) -> Option<T> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str]) -> Option<T> {
        let Some((first, rest)) = levels.split_first() else {
            return node.value.take();
        };
        let child = node.children.get_mut(*first)?;
        let removed = Self::remove_at(child, rest);
        if child.value.is_none() && child.children.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// Calls `visit` with the value of every filter that matches `topic` (MQTT 5.0 section
    /// 4.7): `+` matches one level, `#` the rest (including the parent level itself), and a
    /// topic starting with `$` is not matched by a filter starting with a wildcard
    /// [MQTT-4.7.2-1].
    pub fn matches<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a T)) {
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, &levels, dollar, &mut visit);
    }

    fn match_at<'a>(
        node: &'a Node<T>,
        levels: &[&str],
        skip_wildcards: bool,
        visit: &mut impl FnMut(&'a T),
    ) {
        if !skip_wildcards {
            if let Some(value) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                visit(value);
            }
        }
        let Some((level, rest)) = levels.split_first() else {
            if let Some(value) = &node.value {
                visit(value);
            }
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::match_at(child, rest, false, visit);
        }
        if !skip_wildcards {
            if let Some(child) = node.children.get("+") {
                Self::match_at(child, rest, false, visit);
            }
        }
    }
}

/// Whether `filter` matches `topic`, without a trie: for retained messages, where each stored
/// topic is checked against one new subscription.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        if filter_level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(level) if filter_level == "+" || filter_level == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn arb_filter() -> impl Strategy<Value = String> {
        let level = prop_oneof!["[ab$]{0,2}", Just("+".to_string())];
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
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
    }
}
