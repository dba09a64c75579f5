//! Topic names and topic filters as validated types (MQTT 5.0 section 4.7). A value of either
//! type is always valid: the only ways in are the checked constructors.

use std::fmt;
use std::ops::Deref;

use bytestring::ByteString;

use super::DecodeError;

/// The maximum encoded length of any MQTT string, topics included.
pub const TOPIC_LEN_MAX: usize = u16::MAX as usize;

/// The most levels a topic name or filter may have. Without a bound a client chooses how deep
/// every walk over a topic goes (one 60 KB filter of 30,000 levels once overflowed a shard's
/// stack and took the broker down). Mosquitto 2.0 refuses more than 200 `/` in any topic or
/// filter a client sends (`TOPIC_HIERARCHY_LIMIT`), so 201 levels pass and 202 do not; measured
/// against 2.0.11, it closes the connection (5.0: DISCONNECT 0x82 for a PUBLISH, 0x81 for a
/// SUBSCRIBE or UNSUBSCRIBE, no CONNACK for a will), and Culex does the same.
pub const TOPIC_LEVELS_MAX: usize = 201;

/// Whether `topic` has more levels than [`TOPIC_LEVELS_MAX`].
fn too_deep(topic: &str) -> bool {
    topic.bytes().filter(|&b| b == b'/').count() >= TOPIC_LEVELS_MAX
}

/// A topic name: no `+` or `#` [MQTT-4.7.0-1]. It is empty only in a 5.0 PUBLISH that carries a
/// topic alias; the PUBLISH decoder enforces that, so this type admits the empty name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TopicName(ByteString);

impl TopicName {
    pub fn new(name: impl Into<ByteString>) -> Result<Self, DecodeError> {
        let name = name.into();
        if name.len() > TOPIC_LEN_MAX || name.contains(['+', '#', '\0']) {
            return Err(DecodeError::InvalidTopicName);
        }
        if too_deep(&name) {
            return Err(DecodeError::TopicTooDeep);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name in its own allocation, sharing nothing with the buffer it was decoded
    /// from (no revalidation: it is already valid).
    pub fn detached(&self) -> TopicName {
        TopicName(ByteString::from(self.as_str()))
    }
}

/// A topic filter: `+` only as a whole level, `#` only as the whole last level [MQTT-4.7.1-1,
/// -2], not empty [MQTT-4.7.3-1]. A shared subscription `$share/{group}/{filter}` has a group
/// name without wildcards or `/` and a non-empty filter after it [MQTT-4.8.2-1, -2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(ByteString);

/// The parts of a `$share/{group}/{filter}` subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

const SHARE_PREFIX: &str = "$share/";

impl TopicFilter {
    pub fn new(filter: impl Into<ByteString>) -> Result<Self, DecodeError> {
        let filter = filter.into();
        if filter.len() > TOPIC_LEN_MAX || filter.contains('\0') {
            return Err(DecodeError::InvalidTopicFilter);
        }
        if too_deep(&filter) {
            return Err(DecodeError::TopicFilterTooDeep);
        }
        let pattern = match filter.strip_prefix(SHARE_PREFIX) {
            Some(rest) => {
                let (group, pattern) =
                    rest.split_once('/').ok_or(DecodeError::InvalidTopicFilter)?;
                if group.is_empty() || group.contains(['+', '#']) {
                    return Err(DecodeError::InvalidTopicFilter);
                }
                pattern
            }
            None => &filter[..],
        };
        if !is_valid_pattern(pattern) {
            return Err(DecodeError::InvalidTopicFilter);
        }
        Ok(Self(filter))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> Option<SharedFilter<'_>> {
        let (group, filter) = self.0.strip_prefix(SHARE_PREFIX)?.split_once('/')?;
        Some(SharedFilter { group, filter })
    }
}

fn is_valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let mut levels = pattern.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        let valid = match level {
            "+" => true,
            "#" => is_last,
            _ => !level.contains(['+', '#']),
        };
        if !valid {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic` (MQTT 5.0 section 4.7), one pair at a time: for ACL rules,
/// bridge topic lines and retained messages checked against one new subscription. The broker's
/// subscription trie gives the same answers for many filters at once.
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

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_impls!(TopicName);
string_newtype_impls!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_the_spec() {
        for ok in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "/finance",
            "$SYS/#",
            "$share/g/a/+",
            "$share/g/#",
            "a//b",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "a/#/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "a\0b",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn names_refuse_wildcards() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("").is_ok());
        assert!(TopicName::new("a/+").is_err());
        assert!(TopicName::new("a/#").is_err());
    }

    #[test]
    fn depth_is_bounded_as_mosquitto_bounds_it() {
        let levels = |n: usize, level: &str| vec![level; n].join("/");
        assert!(TopicName::new(levels(TOPIC_LEVELS_MAX, "a")).is_ok());
        assert_eq!(
            TopicName::new(levels(TOPIC_LEVELS_MAX + 1, "a")),
            Err(DecodeError::TopicTooDeep)
        );
        assert!(TopicFilter::new(levels(TOPIC_LEVELS_MAX, "+")).is_ok());
        assert_eq!(
            TopicFilter::new(levels(TOPIC_LEVELS_MAX + 1, "+")),
            Err(DecodeError::TopicFilterTooDeep)
        );
        // Empty levels count: `/` alone separates them.
        assert_eq!(
            TopicFilter::new("/".repeat(TOPIC_LEVELS_MAX)),
            Err(DecodeError::TopicFilterTooDeep)
        );
        // The 60 KB filter of 30,000 levels that once crashed the broker.
        assert_eq!(TopicFilter::new(levels(30_000, "+")), Err(DecodeError::TopicFilterTooDeep));
        // The depth of a shared subscription counts its `$share/group/` prefix, as Mosquitto's.
        let shared = format!("$share/g/{}", levels(TOPIC_LEVELS_MAX - 2, "+"));
        assert!(TopicFilter::new(shared.clone()).is_ok());
        assert!(TopicFilter::new(format!("{shared}/+")).is_err());
    }

    #[test]
    fn shared_parts() {
        let f = TopicFilter::new("$share/group/a/+/c").unwrap();
        assert_eq!(f.shared(), Some(SharedFilter { group: "group", filter: "a/+/c" }));
        assert_eq!(TopicFilter::new("a/b").unwrap().shared(), None);
    }
}
