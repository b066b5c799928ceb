//! Retained messages (section 3.3.1.3): the last retained message of each topic, found by
//! the filter of a new subscription.
//!
//! A trie over topic levels, like the subscription tree but the other way round: the
//! stored keys are topic names and the query is a filter, so a filter such as
//! "devices/42/+" visits the children of one node instead of scanning every topic.
//!
//! Plain single-threaded data: one shard owns a store; other cores reach it by messages.

use std::collections::HashMap;
use std::str::Split;

use crate::protocol::topic::{is_shared, validate_topic_filter, validate_topic_name};

/// Topic name to retained message `V`.
pub struct RetainedStore<V> {
    root: Node<V>,
    /// Topics holding a message.
    len: usize,
}

struct Node<V> {
    /// Children by level name, the empty name included ("a//b" has three levels).
    children: HashMap<Box<str>, Node<V>>,
    /// The message retained on the topic that ends at this node. Always `None` at the root,
    /// since every topic has at least one level.
    value: Option<V>,
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> RetainedStore<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of topics holding a retained message.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Retains `value` on `topic` (a valid topic name), returning the message it replaces.
    /// Deleting a retained message (a retained PUBLISH with an empty payload,
    /// [MQTT-3.3.1-6]) is [`remove`](Self::remove): the caller decides which it is.
    pub fn set(&mut self, topic: &str, value: V) -> Option<V> {
        debug_assert!(
            validate_topic_name(topic).is_ok(),
            "invalid topic {topic:?}"
        );
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Removes the message retained on `topic`. Nodes left without a message or children
    /// are freed, so memory follows the retained topics rather than their history.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let old = self.root.remove(topic.split('/'));
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Calls `f` with the topic and message of every retained message that `filter` (a
    /// valid, non-shared filter) matches, in no particular order. Filters starting with
    /// '+' or '#' do not match topics starting with '$' [MQTT-4.7.2-1].
    ///
    /// Not for shared subscriptions: 5.0 sends retained messages to new non-shared
    /// subscriptions only (section 3.3.1.3), so the caller skips this for a `$share/...`
    /// filter rather than stripping the prefix.
    ///
    /// The topic passed to `f` is rebuilt level by level in one buffer for the whole call;
    /// a caller that keeps it copies it.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        debug_assert!(
            validate_topic_filter(filter).is_ok() && !is_shared(filter),
            "invalid or shared filter {filter:?}"
        );
        let mut topic = String::new();
        self.root.visit(filter, true, &mut topic, &mut f);
    }

    /// Nodes below the root, for tests of pruning.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.descendant_count()
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }

    fn remove(&mut self, mut levels: Split<'_, char>) -> Option<V> {
        let Some(level) = levels.next() else {
            return self.value.take();
        };
        let child = self.children.get_mut(level)?;
        let old = child.remove(levels);
        if child.is_empty() {
            self.children.remove(level);
            // Give back the table of a level that has lost most of its children, keeping
            // room to grow again without thrashing.
            if self.children.len() * 4 < self.children.capacity() {
                self.children.shrink_to(self.children.len() * 2);
            }
        }
        old
    }

    /// Reports the messages at and below this node that match `filter`, the filter's
    /// levels after this node's; `topic` holds this node's topic.
    fn visit<F: FnMut(&str, &V)>(
        &self,
        filter: &str,
        at_root: bool,
        topic: &mut String,
        f: &mut F,
    ) {
        let (level, rest) = match filter.split_once('/') {
            Some((level, rest)) => (level, Some(rest)),
            None => (filter, None),
        };
        match level {
            "#" => {
                // "a/#" matches "a" too; the root holds no message.
                if let Some(value) = &self.value {
                    f(topic, value);
                }
                self.visit_children(at_root, topic, &mut |child, topic| {
                    child.visit_all(topic, f)
                });
            }
            "+" => self.visit_children(at_root, topic, &mut |child, topic| match rest {
                Some(rest) => child.visit(rest, false, topic, f),
                None => child.report(topic, f),
            }),
            literal => {
                if let Some(child) = self.children.get(literal) {
                    let mark = push_level(topic, at_root, literal);
                    match rest {
                        Some(rest) => child.visit(rest, false, topic, f),
                        None => child.report(topic, f),
                    }
                    topic.truncate(mark);
                }
            }
        }
    }

    /// Calls `g` on every child with its topic, skipping at the root the topics starting
    /// with '$', which a wildcard does not match there [MQTT-4.7.2-1].
    fn visit_children(
        &self,
        at_root: bool,
        topic: &mut String,
        g: &mut impl FnMut(&Node<V>, &mut String),
    ) {
        for (name, child) in &self.children {
            if at_root && name.starts_with('$') {
                continue;
            }
            let mark = push_level(topic, at_root, name);
            g(child, topic);
            topic.truncate(mark);
        }
    }

    fn report<F: FnMut(&str, &V)>(&self, topic: &str, f: &mut F) {
        if let Some(value) = &self.value {
            f(topic, value);
        }
    }

    /// Reports this node's message and all those below it.
    fn visit_all<F: FnMut(&str, &V)>(&self, topic: &mut String, f: &mut F) {
        self.report(topic, f);
        self.visit_children(false, topic, &mut |child, topic| child.visit_all(topic, f));
    }

    #[cfg(test)]
    fn descendant_count(&self) -> usize {
        self.children
            .values()
            .map(|child| 1 + child.descendant_count())
            .sum()
    }
}

/// Appends `level` to `topic` and returns the length to truncate back to.
fn push_level(topic: &mut String, at_root: bool, level: &str) -> usize {
    let mark = topic.len();
    // Not `topic.is_empty()`: after an empty first level ("/a") the buffer is empty too.
    if !at_root {
        topic.push('/');
    }
    topic.push_str(level);
    mark
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::matches;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn store_of(topics: &[&str]) -> RetainedStore<String> {
        let mut store = RetainedStore::new();
        for topic in topics {
            assert_eq!(store.set(topic, topic.to_string()), None);
        }
        store
    }

    fn matching(store: &RetainedStore<String>, filter: &str) -> Vec<String> {
        let mut found = Vec::new();
        store.for_each_match(filter, |topic, value| {
            assert_eq!(topic, value);
            found.push(topic.to_owned());
        });
        found.sort();
        found
    }

    #[test]
    fn examples_of_section_4_7() {
        let store = store_of(&[
            "sport",
            "sport/",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "/finance",
            "$SYS/monitor/Clients",
        ]);
        assert_eq!(store.len(), 6);
        assert_eq!(
            matching(&store, "sport/tennis/player1/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(
            matching(&store, "sport/#"),
            [
                "sport",
                "sport/",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking"
            ]
        );
        assert_eq!(matching(&store, "sport/+"), ["sport/"]);
        assert_eq!(matching(&store, "+"), ["sport"]);
        assert_eq!(matching(&store, "+/+"), ["/finance", "sport/"]);
        assert_eq!(matching(&store, "/+"), ["/finance"]);
        assert_eq!(matching(&store, "#").len(), 5, "all but $SYS");
        assert_eq!(matching(&store, "+/monitor/Clients"), Vec::<String>::new());
        assert_eq!(matching(&store, "$SYS/#"), ["$SYS/monitor/Clients"]);
        assert_eq!(matching(&store, "$SYS/monitor/+"), ["$SYS/monitor/Clients"]);
    }

    #[test]
    fn set_replaces_and_remove_prunes() {
        let mut store = RetainedStore::new();
        assert_eq!(store.set("a/b", 1), None);
        assert_eq!(store.set("a/b", 2), Some(1));
        assert_eq!(store.set("a", 3), None);
        assert_eq!(store.set("a//c", 4), None);
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.get("a/"), None);
        assert_eq!(store.remove("a/"), None);
        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("a"), Some(3));
        assert_eq!(store.get("a/b"), Some(&2), "children outlive their parent");
        assert_eq!(store.remove("a/b"), Some(2));
        assert_eq!(store.remove("a//c"), Some(4));
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 0);
    }

    const LEVELS: [&str; 6] = ["a", "b", "$s", "", "+", "#"];

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&LEVELS[..]), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid filter", |f| validate_topic_filter(f).is_ok())
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&LEVELS[..4]), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid topic", |t| validate_topic_name(t).is_ok())
    }

    proptest! {
        /// Against a map scanned with `matches()`: the same topics with the same messages,
        /// each once; removing everything leaves no node.
        #[test]
        fn agrees_with_matches(
            ops in prop::collection::vec((any::<bool>(), topic()), 0..60),
            filters in prop::collection::vec(filter(), 1..12),
        ) {
            let mut store = RetainedStore::new();
            let mut reference = BTreeMap::new();
            for (seq, (set, topic)) in ops.into_iter().enumerate() {
                if set {
                    prop_assert_eq!(store.set(&topic, seq), reference.insert(topic.clone(), seq));
                } else {
                    prop_assert_eq!(store.remove(&topic), reference.remove(&topic));
                }
                prop_assert_eq!(store.get(&topic), reference.get(&topic));
                prop_assert_eq!(store.len(), reference.len());
            }
            for filter in &filters {
                let mut found = Vec::new();
                store.for_each_match(filter, |topic, value| found.push((topic.to_owned(), *value)));
                found.sort();
                let expected: Vec<_> = reference
                    .iter()
                    .filter(|(topic, _)| matches(filter, topic))
                    .map(|(topic, value)| (topic.clone(), *value))
                    .collect();
                prop_assert_eq!(found, expected, "filter {:?}", filter);
            }
            for topic in reference.keys() {
                prop_assert!(store.remove(topic).is_some());
            }
            prop_assert!(store.is_empty());
            prop_assert_eq!(store.node_count(), 0);
        }
    }
}
