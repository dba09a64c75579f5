//! Count-downs keyed by token: a value held until a known number of confirmations have come,
//! then handed back once. A shard holds CONNACKs and SUBACKs until every other shard has
//! acknowledged its barrier (and, with persistence, the store has committed), and PUBACKs until
//! every shard the message went to has made it durable: the same count-down, here once.

use ahash::AHashMap;

pub struct Latches<T> {
    /// token -> (confirmations still missing, never 0; what waits for them)
    waiting: AHashMap<u64, (usize, T)>,
}

impl<T> Default for Latches<T> {
    fn default() -> Self {
        Latches { waiting: AHashMap::new() }
    }
}

impl<T> Latches<T> {
    /// Holds `value` until `confirmations` calls of `confirm(token)`; with none to wait for,
    /// hands it straight back.
    pub fn hold(&mut self, token: u64, confirmations: usize, value: T) -> Option<T> {
        if confirmations == 0 {
            return Some(value);
        }
        let replaced = self.waiting.insert(token, (confirmations, value));
        debug_assert!(replaced.is_none(), "token {token} held twice");
        None
    }

    /// `token` waits for `more` confirmations besides those it waited for. A token that holds
    /// nothing is left alone.
    pub fn add(&mut self, token: u64, more: usize) {
        if let Some((missing, _)) = self.waiting.get_mut(&token) {
            *missing += more;
        }
    }

    /// One confirmation for `token` came: the value, if that was the last one missing. A token
    /// that holds nothing (already released) is ignored.
    pub fn confirm(&mut self, token: u64) -> Option<T> {
        let (missing, _) = self.waiting.get_mut(&token)?;
        debug_assert!(*missing > 0);
        *missing -= 1;
        if *missing > 0 {
            return None;
        }
        self.waiting.remove(&token).map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_back_after_its_last_confirmation_only() {
        let mut latches = Latches::default();
        assert_eq!(latches.hold(1, 2, "ack"), None);
        assert_eq!(latches.hold(2, 1, "other"), None);
        assert_eq!(latches.confirm(1), None);
        assert_eq!(latches.confirm(1), Some("ack"));
        assert_eq!(latches.confirm(1), None, "released once");
        assert_eq!(latches.confirm(2), Some("other"));
        assert!(latches.waiting.is_empty());
    }

    #[test]
    fn nothing_to_wait_for_releases_at_once() {
        let mut latches = Latches::default();
        assert_eq!(latches.hold(7, 0, 'x'), Some('x'));
        assert!(latches.waiting.is_empty());
        assert_eq!(latches.confirm(7), None);
    }
}
