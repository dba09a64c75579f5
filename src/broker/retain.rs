//! The shard's replica of the retained store: one message per topic, in a trie of topic names,
//! so that a new subscription walks only the branches its filter reaches (Mosquitto keeps its
//! retained messages in its topic tree for the same reason). Every shard holds all of them
//! (docs/ARCHITECTURE.md, "Retained messages").

use std::sync::Arc;

use super::session::Message;
use crate::protocol::trie::TopicTrie;

#[derive(Default)]
pub struct RetainedStore {
    messages: TopicTrie<Arc<Message>>,
    /// Topic and payload bytes of every message held, kept as they come and go for `$SYS`
    /// (a walk of the store on every sweep cost O(n)).
    bytes: usize,
}

impl RetainedStore {
    /// Keeps `message` as its topic's retained message; an empty payload clears it
    /// [MQTT-3.3.1-6, -7].
    pub fn store(&mut self, message: &Arc<Message>) {
        let size = |m: &Message| m.topic.len() + m.payload.len();
        if message.payload.is_empty() {
            if let Some(old) = self.messages.remove(&message.topic) {
                self.bytes -= size(&old);
            }
            return;
        }
        let held = self.messages.entry(&message.topic, || message.clone());
        if !Arc::ptr_eq(held, message) {
            self.bytes -= size(held);
            *held = message.clone();
        }
        self.bytes += size(message);
    }

    /// Calls `visit` with every retained message whose topic `filter` matches.
    pub fn matching<'a>(&'a self, filter: &str, visit: impl FnMut(&'a Arc<Message>)) {
        self.messages.matched_by(filter, visit);
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Topic and payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Properties, QoS, TopicName};
    use bytestring::ByteString;

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            publisher: ByteString::new(),
            source: crate::broker::session::Source::Unchecked,
            expires_at: None,
        })
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut found = Vec::new();
        store.matching(filter, |m| found.push(format!("{}={:?}", m.topic, m.payload)));
        found.sort();
        found
    }

    #[test]
    fn one_message_per_topic_until_cleared_with_its_size_kept() {
        let mut store = RetainedStore::default();
        store.store(&retained("room1/t", b"26.3"));
        store.store(&retained("room1/h", b"40"));
        store.store(&retained("room1/t", b"26.4"));
        assert_eq!(topics(&store, "room1/#"), ["room1/h=b\"40\"", "room1/t=b\"26.4\""]);
        assert_eq!((store.len(), store.bytes()), (2, 7 + 4 + 7 + 2));
        store.store(&retained("room1/t", b""));
        store.store(&retained("never/held", b""));
        assert_eq!(topics(&store, "+/+"), ["room1/h=b\"40\""]);
        assert_eq!((store.len(), store.bytes()), (1, 7 + 2));
    }
}
