//! Mosquitto's `acl_file`:
//!
//! ```text
//! topic [read|write|readwrite|deny] TOPIC     # before any `user` line: anonymous clients
//! user USERNAME                               # the `topic` lines after it are this user's
//! pattern [read|write|readwrite|deny] TOPIC   # every client, %c = client id, %u = username
//! ```
//!
//! The access word may be left out (readwrite). As Mosquitto 2.0.11 applies it (checked side by
//! side in `tests/acl.rs`): a matching `deny` wins over any grant; otherwise a rule that grants
//! the access and matches allows it; anything else is denied. Rules with wildcards do not match
//! `$` topics unless they start with `$` themselves.
//!
//! Rules are indexed by filter in a topic trie, so a check (every PUBLISH, and every delivery
//! while an ACL file is in force) walks only the filters that match its topic: as a list, a
//! user with 10,000 rules cost 125 µs a check (`cargo bench --bench acl`). Patterns with `%c`
//! or `%u` differ per client and are matched one by one, as Mosquitto does; the others join
//! the index.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use ahash::AHashMap;
use thiserror::Error;

use crate::protocol::filter_matches;
use crate::protocol::trie::TopicTrie;
use crate::protocol::TopicFilter;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AclFileError {
    #[error("cannot read acl file {file}: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    #[error("{file}:{line}: {reason}")]
    Invalid { file: PathBuf, line: usize, reason: String },
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages published to it (checked at delivery, retained messages included).
    Read,
    /// Publish to it (wills included).
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: TopicFilter,
}

/// What the rules naming one filter grant, together (a file may name a filter twice).
#[derive(Debug, Default, Clone, Copy)]
struct Grants {
    read: bool,
    write: bool,
    deny: bool,
}

impl Grants {
    fn add(&mut self, grant: Grant) {
        match grant {
            Grant::Read => self.read = true,
            Grant::Write => self.write = true,
            Grant::ReadWrite => (self.read, self.write) = (true, true),
            Grant::Deny => self.deny = true,
        }
    }

    fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// What the rules matching one topic say: a matching `deny` wins over any grant.
#[derive(Debug, Default)]
struct Verdict {
    denied: bool,
    allowed: bool,
}

impl Verdict {
    fn add(&mut self, grants: Grants, access: Access) {
        self.denied |= grants.deny;
        self.allowed |= grants.allows(access);
    }

    fn allows(&self) -> bool {
        self.allowed && !self.denied
    }
}

/// Rules indexed by filter.
#[derive(Debug, Default)]
struct Rules(TopicTrie<Grants>);

impl Rules {
    fn add(&mut self, rule: &Rule) {
        self.0.entry(rule.filter.as_str(), Grants::default).add(rule.grant);
    }

    fn judge(&self, topic: &str, access: Access, verdict: &mut Verdict) {
        self.0.matches(topic, |grants| verdict.add(*grants, access));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    grant: Grant,
    /// With `%c` and `%u` still in it.
    template: String,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

#[derive(Debug, Default)]
pub struct AclFile {
    anonymous: Rules,
    users: AHashMap<String, Rules>,
    /// Patterns without `%c` or `%u`: the same rule for every client.
    every_client: Rules,
    /// Patterns with `%c` or `%u`.
    per_client: Vec<Pattern>,
    /// A hash of every rule in the file's order, so a reload can say whether the rules
    /// changed (the index cannot be compared).
    fingerprint: u64,
}

impl PartialEq for AclFile {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl AclFile {
    pub fn load(path: &Path) -> Result<AclFile, AclFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| AclFileError::Unreadable {
            file: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// A line Mosquitto would not accept is an error naming file and line.
    pub fn parse(text: &str, path: &Path) -> Result<AclFile, AclFileError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        let mut fingerprint = std::hash::DefaultHasher::new();
        for (index, line) in text.lines().enumerate() {
            let invalid = |reason: String| AclFileError::Invalid {
                file: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" if !rest.is_empty() => {
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (grant, topic) = split_grant(rest);
                    if topic.is_empty() {
                        return Err(invalid(format!("`{keyword}` needs a topic")));
                    }
                    (&user, keyword, grant, topic).hash(&mut fingerprint);
                    let substitutes = topic.contains("%c") || topic.contains("%u");
                    if keyword == "pattern" && substitutes {
                        acl.per_client.push(Pattern { grant, template: topic.to_string() });
                        continue;
                    }
                    let filter = TopicFilter::new(topic.to_string())
                        .map_err(|_| invalid(format!("`{topic}` is not a topic filter")))?;
                    let rules = match (keyword, &user) {
                        ("pattern", _) => &mut acl.every_client,
                        (_, Some(user)) => acl.users.entry(user.clone()).or_default(),
                        (_, None) => &mut acl.anonymous,
                    };
                    rules.add(&Rule { grant, filter });
                }
                _ => {
                    return Err(invalid(format!(
                        "expected `user NAME`, `topic [read|write|readwrite|deny] TOPIC` or \
                         `pattern [read|write|readwrite|deny] TOPIC`, found `{line}`"
                    )))
                }
            }
        }
        acl.fingerprint = fingerprint.finish();
        Ok(acl)
    }

    /// Whether `who` may read or write `topic`.
    pub fn allows(&self, who: Identity<'_>, topic: &str, access: Access) -> bool {
        let mut verdict = Verdict::default();
        let own = match who.username {
            Some(username) => self.users.get(username),
            None => Some(&self.anonymous),
        };
        if let Some(rules) = own {
            rules.judge(topic, access, &mut verdict);
        }
        self.every_client.judge(topic, access, &mut verdict);
        for rule in self.per_client.iter().filter_map(|p| p.for_client(who)) {
            if filter_matches(&rule.filter, topic) {
                let mut grants = Grants::default();
                grants.add(rule.grant);
                verdict.add(grants, access);
            }
        }
        verdict.allows()
    }
}

impl Pattern {
    /// The rule this pattern makes for one client. None when it names the username of a
    /// client without one, or when the substitution would bring wildcards into the filter.
    fn for_client(&self, who: Identity<'_>) -> Option<Rule> {
        if self.template.contains("%u") && who.username.is_none() {
            return None;
        }
        let values = [Some(who.client_id), who.username];
        if values.iter().flatten().any(|v| v.contains(['+', '#'])) {
            return None;
        }
        let topic = self
            .template
            .replace("%c", who.client_id)
            .replace("%u", who.username.unwrap_or_default());
        Some(Rule { grant: self.grant, filter: TopicFilter::new(topic).ok()? })
    }
}

/// `[read|write|readwrite|deny] TOPIC`: the access word is optional (readwrite).
fn split_grant(rest: &str) -> (Grant, &str) {
    let (word, topic) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let grant = match word {
        "read" => Grant::Read,
        "write" => Grant::Write,
        "readwrite" => Grant::ReadWrite,
        "deny" => Grant::Deny,
        _ => return (Grant::ReadWrite, rest),
    };
    (grant, topic.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text is an ACL file or an error naming file and line, never a panic.
        #[test]
        fn any_text_parses_or_names_its_line(text in "(user|topic|pattern|#|[ -~]){0,12}( [ -~]{0,20}){0,3}(\n[ -~]{0,40}){0,8}") {
            if let Err(AclFileError::Invalid { file, line, .. }) = AclFile::parse(&text, Path::new("fuzz.acl")) {
                proptest::prop_assert_eq!(file, PathBuf::from("fuzz.acl"));
                proptest::prop_assert!((1..=text.lines().count()).contains(&line));
            }
        }
    }

    const ACL: &str = "# anonymous clients\ntopic read public/#\n\nuser alice\n\
        topic readwrite alice/#\ntopic write sensors/#\ntopic deny alice/secret\n\
        topic readwrite public/#\n\nuser bob\ntopic read sensors/#\ntopic alice/#\n\
        pattern readwrite clients/%c/#\npattern read users/%u/#\n";

    fn who<'a>(client_id: &'a str, username: Option<&'a str>) -> Identity<'a> {
        Identity { client_id, username }
    }

    #[test]
    fn users_anonymous_patterns_and_deny() {
        let acl = AclFile::parse(ACL, Path::new("acl")).unwrap();
        let (anon, alice, bob) = (who("a", None), who("c1", Some("alice")), who("c2", Some("bob")));
        assert!(acl.allows(anon, "public/x", Access::Read));
        assert!(!acl.allows(anon, "public/x", Access::Write));
        assert!(acl.allows(alice, "alice/x", Access::Write));
        assert!(!acl.allows(alice, "alice/secret", Access::Write), "deny wins");
        assert!(!acl.allows(alice, "alice/secret", Access::Read));
        assert!(acl.allows(alice, "sensors/t", Access::Write));
        assert!(!acl.allows(alice, "sensors/t", Access::Read));
        assert!(acl.allows(bob, "alice/x", Access::Write), "no access word: readwrite");
        assert!(acl.allows(bob, "clients/c2/x", Access::Write));
        assert!(!acl.allows(bob, "clients/c1/x", Access::Read));
        assert!(acl.allows(bob, "users/bob/x", Access::Read));
        assert!(!acl.allows(bob, "users/bob/x", Access::Write));
        assert!(!acl.allows(anon, "users//x", Access::Read), "%u needs a username");
        assert!(!acl.allows(who("c+", None), "clients/c+/x", Access::Read));
        assert!(!acl.allows(bob, "other", Access::Read), "nothing matches: denied");
    }

    #[test]
    fn wildcard_rules_do_not_reach_dollar_topics() {
        let acl = AclFile::parse("topic #\ntopic read $SYS/#\n", Path::new("acl")).unwrap();
        assert!(acl.allows(who("c", None), "a/b", Access::Write));
        assert!(!acl.allows(who("c", None), "$SYS/broker/uptime", Access::Write));
        assert!(acl.allows(who("c", None), "$SYS/broker/uptime", Access::Read));
    }

    #[test]
    fn rules_for_one_filter_and_from_every_source_add_up() {
        let text = "user alice\ntopic read a/+\ntopic write a/+\ntopic deny a/secret\n\
                    pattern readwrite a/#\npattern write site/%c\n";
        let acl = AclFile::parse(text, Path::new("acl")).unwrap();
        let (alice, carol) = (who("c1", Some("alice")), who("c3", Some("carol")));
        assert!(acl.allows(alice, "a/x", Access::Read) && acl.allows(alice, "a/x", Access::Write));
        assert!(!acl.allows(alice, "a/secret", Access::Read), "her deny beats every grant");
        assert!(acl.allows(carol, "a/secret", Access::Read), "a plain pattern: every client's");
        assert!(
            acl.allows(carol, "site/c3", Access::Write)
                && !acl.allows(carol, "site/c1", Access::Write)
        );
        assert!(!acl.allows(who("x", None), "b", Access::Read), "a user without rules");
    }

    #[test]
    fn a_reload_tells_changed_rules_from_the_same() {
        let parse = |text: &str| AclFile::parse(text, Path::new("acl")).unwrap();
        assert_eq!(parse(ACL), parse(&format!("# a comment\n{ACL}\n")));
        assert_ne!(parse(ACL), parse(&ACL.replace("deny", "read")));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let error = AclFile::parse("user alice\ntopic read a/#/b\n", Path::new("acl")).unwrap_err();
        assert_eq!(error.to_string(), "acl:2: `a/#/b` is not a topic filter");
        let error = AclFile::parse("\ngrant all\n", Path::new("acl")).unwrap_err();
        assert!(error.to_string().starts_with("acl:2: expected `user NAME`"), "{error}");
    }
}
