//! The subscription tree: which subscriptions a PUBLISH topic reaches (section 4.7), with
//! shared subscriptions (section 4.8.2) picked round-robin.
//!
//! A trie over topic levels: each node is one level of a filter ('/'-separated, and empty
//! levels are real levels: "a//b" has three), with a literal child per level name and one
//! '+' child. A filter ending in '#' does not get a node of its own: its subscriptions sit
//! on the parent's `multi` slot, since '#' matches the parent level and everything below it
//! ("sport/#" matches "sport"). Matching walks the topic once, following at each node the
//! literal child and the '+' child, so its cost depends on the filters that can match and
//! not on how many subscriptions the tree holds. It allocates nothing.
//!
//! Plain single-threaded data: one shard owns a tree; other cores reach it by messages.

use std::collections::HashMap;
use std::hash::Hash;
use std::str::Split;

use crate::protocol::topic::{parse_shared, validate_topic_filter, SharedFilter};

/// One subscription reached by a topic, as reported by [`SubscriptionTree::for_each_match`].
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// An ordinary subscription of `key`.
    Normal { key: &'a K, value: &'a V },
    /// The member of the shared group `group` chosen for this message (section 4.8.2): one
    /// member per matching group, the next one in subscription order each time.
    Shared {
        group: &'a str,
        key: &'a K,
        value: &'a V,
    },
}

impl<'a, K, V> Match<'a, K, V> {
    pub fn key(&self) -> &'a K {
        match *self {
            Match::Normal { key, .. } | Match::Shared { key, .. } => key,
        }
    }

    pub fn value(&self) -> &'a V {
        match *self {
            Match::Normal { value, .. } | Match::Shared { value, .. } => value,
        }
    }
}

// Written out rather than derived: a derive would require `K: Copy` and `V: Copy`, which a
// pair of references does not need.
impl<K, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Match<'_, K, V> {}

/// Topic filters to subscribers `K` (a session id, a shard id...) with a value `V` each
/// (subscription options, a count...).
///
/// A key holds at most one subscription per filter: subscribing again replaces it
/// [MQTT-3.8.4-3]. A key with several overlapping filters ("a/+" and "a/#") is reported
/// once per matching filter; merging them into one delivery [MQTT-3.3.4-2] is the router's
/// job, since it depends on the options in `V`. The filter itself is not reported: a value
/// that needs it (for logging, say) carries it.
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    /// Subscriptions held: plain ones plus members of shared groups.
    len: usize,
}

struct Node<K, V> {
    /// Children by literal level name, the empty name included.
    children: HashMap<Box<str>, Node<K, V>>,
    /// The '+' child.
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter ends at this node. Boxed, as most nodes are only a step
    /// on the way to others.
    exact: Option<Box<Subscribers<K, V>>>,
    /// Subscriptions whose filter is this node's path followed by "/#" (at the root: "#").
    multi: Option<Box<Subscribers<K, V>>>,
}

/// The subscriptions of one filter. Never empty while in the tree: an empty one is pruned.
struct Subscribers<K, V> {
    plain: HashMap<K, V>,
    /// Few per filter in practice, so a list searched by name.
    groups: Vec<SharedGroup<K, V>>,
}

struct SharedGroup<K, V> {
    name: Box<str>,
    /// In subscription order; never empty. A key appears once.
    members: Vec<(K, V)>,
    /// The member that gets the next message.
    cursor: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Eq + Clone + Hash, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions: plain ones plus members of shared groups.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter`, which must have passed [`validate_topic_filter`]. A
    /// shared filter `$share/GROUP/FILTER` makes `key` a member of group GROUP on FILTER.
    /// Returns the value of the subscription this one replaces [MQTT-3.8.4-3].
    pub fn subscribe(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        debug_assert!(
            validate_topic_filter(filter).is_ok(),
            "unvalidated filter {filter:?}"
        );
        let (group, filter) = split_shared(filter);
        let subscribers = self.root.subscribers_mut(filter);
        let old = match group {
            None => subscribers.plain.insert(key, value),
            Some(group) => subscribers.insert_member(group, key, value),
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the subscription of `key` to `filter` (written as it was subscribed, with
    /// its `$share/GROUP/` prefix if any) and returns its value. Nodes left without
    /// subscriptions or children are freed, so memory follows the live subscriptions
    /// rather than their history.
    pub fn unsubscribe(&mut self, filter: &str, key: &K) -> Option<V> {
        let (group, filter) = split_shared(filter);
        let old = self.root.remove(filter.split('/'), group, key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Calls `f` for each subscription whose filter matches `topic` (a topic name, not a
    /// filter): every plain subscription, and for every matching shared group the one member
    /// whose turn it is, which advances that group's cursor (hence `&mut self`).
    ///
    /// Filters starting with '+' or '#' do not match topics starting with '$'
    /// [MQTT-4.7.2-1]. The order of the calls is unspecified.
    pub fn for_each_match(&mut self, topic: &str, mut f: impl FnMut(Match<'_, K, V>)) {
        let (level, rest) = split_first(topic);
        let root = &mut self.root;
        if !topic.starts_with('$') {
            report(&mut root.multi, &mut f);
            if let Some(plus) = root.plus.as_deref_mut() {
                plus.visit(rest, &mut f);
            }
        }
        if let Some(child) = root.children.get_mut(level) {
            child.visit(rest, &mut f);
        }
    }

    /// Nodes below the root, for tests of pruning.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.descendant_count()
    }
}

/// The group (if shared) and the plain filter of a validated filter.
fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        None => (None, filter),
        Some(Ok(SharedFilter { group, filter })) => (Some(group), filter),
        Some(Err(_)) => panic!("malformed shared filter {filter:?}: filters must be validated"),
    }
}

/// The first level of `levels` and the levels after it, `None` when it was the last.
fn split_first(levels: &str) -> (&str, Option<&str>) {
    match levels.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (levels, None),
    }
}

fn report<K: Eq + Hash, V, F: FnMut(Match<'_, K, V>)>(
    slot: &mut Option<Box<Subscribers<K, V>>>,
    f: &mut F,
) {
    if let Some(subscribers) = slot.as_deref_mut() {
        subscribers.report(f);
    }
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            exact: None,
            multi: None,
        }
    }
}

impl<K: Eq + Clone + Hash, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.multi.is_none()
    }

    /// The subscribers of plain `filter`, creating its path.
    fn subscribers_mut(&mut self, filter: &str) -> &mut Subscribers<K, V> {
        let mut node = self;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "#" => {
                    debug_assert!(levels.peek().is_none(), "'#' not last in {filter:?}");
                    return node.multi.get_or_insert_with(Default::default);
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                literal => node = node.children.entry(literal.into()).or_default(),
            }
        }
        node.exact.get_or_insert_with(Default::default)
    }

    /// Removes `key` from the filter whose remaining levels are `levels`, pruning what it
    /// leaves empty below this node.
    fn remove(&mut self, mut levels: Split<'_, char>, group: Option<&str>, key: &K) -> Option<V> {
        match levels.next() {
            None => remove_from(&mut self.exact, group, key),
            Some("#") => remove_from(&mut self.multi, group, key),
            Some("+") => {
                let child = self.plus.as_deref_mut()?;
                let old = child.remove(levels, group, key);
                if child.is_empty() {
                    self.plus = None;
                }
                old
            }
            Some(literal) => {
                let child = self.children.get_mut(literal)?;
                let old = child.remove(levels, group, key);
                if child.is_empty() {
                    self.children.remove(literal);
                    shrink_after_remove(&mut self.children);
                }
                old
            }
        }
    }

    /// Reports the subscriptions of this node and below that match a topic whose levels
    /// after this node's are `rest` (`None`: the topic ends here).
    fn visit<F: FnMut(Match<'_, K, V>)>(&mut self, rest: Option<&str>, f: &mut F) {
        // "a/#" matches "a" and everything below it.
        report(&mut self.multi, f);
        let Some(rest) = rest else {
            report(&mut self.exact, f);
            return;
        };
        let (level, rest) = split_first(rest);
        if let Some(child) = self.children.get_mut(level) {
            child.visit(rest, f);
        }
        if let Some(plus) = self.plus.as_deref_mut() {
            plus.visit(rest, f);
        }
    }

    #[cfg(test)]
    fn descendant_count(&self) -> usize {
        let below = |node: &Self| 1 + node.descendant_count();
        self.children.values().map(below).sum::<usize>() + self.plus.as_deref().map_or(0, below)
    }
}

fn remove_from<K: Eq + Hash, V>(
    slot: &mut Option<Box<Subscribers<K, V>>>,
    group: Option<&str>,
    key: &K,
) -> Option<V> {
    let subscribers = slot.as_deref_mut()?;
    let old = match group {
        None => {
            let old = subscribers.plain.remove(key);
            shrink_after_remove(&mut subscribers.plain);
            old
        }
        Some(group) => subscribers.remove_member(group, key),
    };
    if subscribers.plain.is_empty() && subscribers.groups.is_empty() {
        *slot = None;
    }
    old
}

/// Gives back a map's memory once it holds under a quarter of its capacity, so that a
/// level that once had 100k children and now has ten does not keep the table of 100k.
/// Halving to twice the length leaves room to grow again without thrashing.
fn shrink_after_remove<Q: Eq + Hash, T>(map: &mut HashMap<Q, T>) {
    if map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Subscribers {
            plain: HashMap::new(),
            groups: Vec::new(),
        }
    }
}

impl<K: Eq + Hash, V> Subscribers<K, V> {
    fn insert_member(&mut self, group: &str, key: K, value: V) -> Option<V> {
        let Some(shared) = self.groups.iter_mut().find(|g| &*g.name == group) else {
            self.groups.push(SharedGroup {
                name: group.into(),
                members: vec![(key, value)],
                cursor: 0,
            });
            return None;
        };
        match shared.members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                shared.members.push((key, value));
                None
            }
        }
    }

    fn remove_member(&mut self, group: &str, key: &K) -> Option<V> {
        let index = self.groups.iter().position(|g| &*g.name == group)?;
        let shared = &mut self.groups[index];
        let old = shared.remove(key);
        if shared.members.is_empty() {
            self.groups.swap_remove(index);
        }
        old
    }

    fn report<F: FnMut(Match<'_, K, V>)>(&mut self, f: &mut F) {
        for (key, value) in &self.plain {
            f(Match::Normal { key, value });
        }
        for shared in &mut self.groups {
            let index = shared.next();
            let (key, value) = &shared.members[index];
            f(Match::Shared {
                group: &shared.name,
                key,
                value,
            });
        }
    }
}

impl<K: Eq, V> SharedGroup<K, V> {
    /// The index of the member whose turn it is, moving the turn on.
    fn next(&mut self) -> usize {
        debug_assert!(self.cursor < self.members.len());
        let index = self.cursor;
        self.cursor = (index + 1) % self.members.len();
        index
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let index = self.members.iter().position(|(k, _)| k == key)?;
        let (_, old) = self.members.remove(index);
        // Keep the turn with the member that had it (or the one after the removed one).
        if index < self.cursor {
            self.cursor -= 1;
        }
        if self.cursor >= self.members.len() {
            self.cursor = 0;
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::{matches, validate_topic_name};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The (value, key) pairs of the plain subscriptions matching `topic`, sorted so that
    /// duplicates show.
    fn plain_matches<K: Eq + Clone + Hash + Ord, V: Clone + Ord>(
        tree: &mut SubscriptionTree<K, V>,
        topic: &str,
    ) -> Vec<(V, K)> {
        let mut found = Vec::new();
        tree.for_each_match(topic, |m| match m {
            Match::Normal { key, value } => found.push((value.clone(), key.clone())),
            Match::Shared { .. } => panic!("unexpected shared match"),
        });
        found.sort();
        found
    }

    /// The filters of section 4.7's examples, each subscribed by key 0 with itself as value.
    fn tree_of(filters: &[&'static str]) -> SubscriptionTree<u32, &'static str> {
        let mut tree = SubscriptionTree::new();
        for filter in filters {
            assert_eq!(tree.subscribe(filter, 0, *filter), None);
        }
        tree
    }

    fn matching_filters(
        tree: &mut SubscriptionTree<u32, &'static str>,
        topic: &str,
    ) -> Vec<&'static str> {
        plain_matches(tree, topic)
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    #[test]
    fn examples_of_section_4_7() {
        let mut tree = tree_of(&[
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "$SYS/#",
            "+/monitor/Clients",
            "$SYS/monitor/+",
        ]);
        assert_eq!(tree.len(), 11);
        let cases: &[(&str, &[&str])] = &[
            (
                "sport/tennis/player1",
                &["#", "sport/#", "sport/tennis/+", "sport/tennis/player1/#"],
            ),
            (
                "sport/tennis/player1/ranking",
                &["#", "sport/#", "sport/tennis/player1/#"],
            ),
            ("sport", &["#", "+", "sport/#"]),
            ("sport/", &["#", "+/+", "sport/#", "sport/+"]),
            ("/finance", &["#", "+/+", "/+"]),
            ("$SYS/broker", &["$SYS/#"]),
            ("$SYS/monitor/Clients", &["$SYS/#", "$SYS/monitor/+"]),
            ("other/monitor/Clients", &["#", "+/monitor/Clients"]),
        ];
        for (topic, expected) in cases {
            assert_eq!(matching_filters(&mut tree, topic), *expected, "{topic}");
        }
    }

    #[test]
    fn empty_levels_are_levels() {
        let mut tree = tree_of(&["a//b", "a/+/b", "a/+", "+//+"]);
        assert_eq!(
            matching_filters(&mut tree, "a//b"),
            ["+//+", "a/+/b", "a//b"]
        );
        assert_eq!(matching_filters(&mut tree, "a/"), ["a/+"]);
        assert_eq!(matching_filters(&mut tree, "a"), Vec::<&str>::new());
        assert_eq!(matching_filters(&mut tree, "//"), ["+//+"]);
    }

    #[test]
    fn subscribing_again_replaces() {
        let mut tree = SubscriptionTree::new();
        assert_eq!(tree.subscribe("a/+", 1, "qos0"), None);
        assert_eq!(tree.subscribe("a/+", 1, "qos1"), Some("qos0"));
        assert_eq!(tree.subscribe("a/+", 2, "qos2"), None);
        assert_eq!(tree.subscribe("$share/g/a/+", 1, "shared0"), None);
        assert_eq!(
            tree.subscribe("$share/g/a/+", 1, "shared1"),
            Some("shared0")
        );
        assert_eq!(tree.len(), 3);
        let mut found = Vec::new();
        tree.for_each_match("a/b", |m| found.push(*m.value()));
        found.sort();
        assert_eq!(found, ["qos1", "qos2", "shared1"]);
    }

    #[test]
    fn overlapping_filters_of_one_key_are_each_reported() {
        let mut tree = tree_of(&["a/+", "a/#", "#"]);
        assert_eq!(matching_filters(&mut tree, "a/b"), ["#", "a/#", "a/+"]);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut tree = SubscriptionTree::new();
        for member in 0..3 {
            tree.subscribe("$share/workers/jobs/+", member, ());
        }
        tree.subscribe("$share/audit/jobs/#", 9, ());
        tree.subscribe("jobs/+", 7, ());
        let mut counts = BTreeMap::new();
        for i in 0..300 {
            let mut workers = 0;
            tree.for_each_match(&format!("jobs/{i}"), |m| match m {
                Match::Shared {
                    group: "workers",
                    key,
                    ..
                } => {
                    workers += 1;
                    *counts.entry(*key).or_insert(0) += 1;
                }
                Match::Shared { group, key, .. } => assert_eq!((group, *key), ("audit", 9)),
                Match::Normal { key, .. } => assert_eq!(*key, 7),
            });
            assert_eq!(workers, 1, "one member per group and message");
        }
        assert_eq!(counts, BTreeMap::from([(0, 100), (1, 100), (2, 100)]));
    }

    #[test]
    fn shared_group_turn_survives_unsubscribe() {
        let mut tree = SubscriptionTree::new();
        for member in 0..4 {
            tree.subscribe("$share/g/t", member, ());
        }
        let mut next = || {
            let mut picked = None;
            tree.for_each_match("t", |m| picked = Some(*m.key()));
            picked.unwrap()
        };
        assert_eq!((next(), next(), next()), (0, 1, 2));
        // The turn is 3's; removing members before it keeps it there.
        tree.unsubscribe("$share/g/t", &0);
        tree.unsubscribe("$share/g/t", &2);
        let mut next = || {
            let mut picked = None;
            tree.for_each_match("t", |m| picked = Some(*m.key()));
            picked.unwrap()
        };
        assert_eq!((next(), next(), next()), (3, 1, 3));
        // Removing the member whose turn it is passes the turn on.
        assert_eq!(tree.unsubscribe("$share/g/t", &1), Some(()));
        tree.subscribe("$share/g/t", 5, ());
        let mut picks = Vec::new();
        for _ in 0..4 {
            tree.for_each_match("t", |m| picks.push(*m.key()));
        }
        assert_eq!(picks, [3, 5, 3, 5]);
    }

    #[test]
    fn dollar_topics_and_shared_wildcards() {
        let mut tree = SubscriptionTree::new();
        tree.subscribe("$share/g/#", 1, ());
        tree.subscribe("$share/g/+/x", 2, ());
        let mut found = 0;
        tree.for_each_match("$SYS/x", |_| found += 1);
        assert_eq!(found, 0);
        tree.for_each_match("SYS/x", |_| found += 1);
        assert_eq!(found, 2);
    }

    #[test]
    fn unsubscribe_prunes_to_nothing() {
        let filters = [
            "a/b/c",
            "a/b/#",
            "a/+/c",
            "+/+",
            "#",
            "a//",
            "/",
            "a/b/c/d/e/f",
            "$SYS/+",
        ];
        let mut tree = SubscriptionTree::new();
        for (key, filter) in filters.iter().enumerate() {
            tree.subscribe(filter, key, ());
            tree.subscribe(filter, 100 + key, ());
            tree.subscribe(&format!("$share/g/{filter}"), key, ());
        }
        assert_eq!(tree.len(), 3 * filters.len());
        assert!(tree.node_count() > 0);
        assert_eq!(tree.unsubscribe("a/b/c/d", &0), None, "no such filter");
        assert_eq!(tree.unsubscribe("a/b/c", &99), None, "no such key");
        assert_eq!(
            tree.unsubscribe("$share/h/a/b/c", &0),
            None,
            "no such group"
        );
        for (key, filter) in filters.iter().enumerate() {
            assert_eq!(tree.unsubscribe(filter, &key), Some(()));
            assert_eq!(tree.unsubscribe(filter, &(100 + key)), Some(()));
            assert_eq!(
                tree.unsubscribe(&format!("$share/g/{filter}"), &key),
                Some(())
            );
            assert_eq!(tree.unsubscribe(filter, &key), None);
        }
        assert!(tree.is_empty());
        assert_eq!(tree.node_count(), 0);
        assert!(tree.root.is_empty());
    }

    const LEVELS: [&str; 6] = ["a", "b", "$s", "", "+", "#"];

    /// A valid filter over a small alphabet, so that random filters and topics overlap.
    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&LEVELS[..]), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid filter", |f| validate_topic_filter(f).is_ok())
    }

    /// A valid topic name over the same alphabet, without its wildcards.
    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&LEVELS[..4]), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("valid topic", |t| validate_topic_name(t).is_ok())
    }

    /// A filter, shared in group g0 or g1 a third of the time each.
    fn maybe_shared_filter() -> impl Strategy<Value = String> {
        (filter(), 0..3u8).prop_map(|(filter, group)| match group {
            0 => filter,
            g => format!("$share/g{g}/{filter}"),
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(String, u8),
        Unsubscribe(String, u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Subscribing twice as often as unsubscribing keeps the tree populated.
        let subscribe = prop::bool::weighted(2.0 / 3.0);
        let op = (subscribe, maybe_shared_filter(), 0..3u8).prop_map(|(subscribe, f, key)| {
            if subscribe {
                Op::Subscribe(f, key)
            } else {
                Op::Unsubscribe(f, key)
            }
        });
        prop::collection::vec(op, 0..80)
    }

    proptest! {
        /// Against `matches()` over every subscription: each plain subscription whose filter
        /// matches is reported once, each matching shared group exactly once with one of its
        /// members, nothing else; removing everything leaves no node.
        #[test]
        fn agrees_with_matches(ops in ops(), topics in prop::collection::vec(topic(), 1..12)) {
            let mut tree = SubscriptionTree::new();
            // (filter as subscribed, key) -> value; the value is the op's index.
            let mut reference = BTreeMap::new();
            for (seq, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Subscribe(filter, key) => {
                        let value = (filter.clone(), seq);
                        let old = reference.insert((filter.clone(), key), value.clone());
                        prop_assert_eq!(tree.subscribe(&filter, key, value), old);
                    }
                    Op::Unsubscribe(filter, key) => {
                        let old = reference.remove(&(filter.clone(), key));
                        prop_assert_eq!(tree.unsubscribe(&filter, &key), old);
                    }
                }
                prop_assert_eq!(tree.len(), reference.len());
            }
            for topic in &topics {
                let mut plain = Vec::new();
                let mut shared = Vec::new();
                tree.for_each_match(topic, |m| match m {
                    Match::Normal { key, value } => plain.push((value.0.clone(), *key)),
                    Match::Shared { group, key, value } => {
                        shared.push((value.0.clone(), group.to_owned(), *key))
                    }
                });
                plain.sort();
                let expected: Vec<_> = reference
                    .keys()
                    .filter(|(f, _)| parse_shared(f).is_none() && matches(f, topic))
                    .cloned()
                    .collect();
                prop_assert_eq!(plain, expected);

                shared.sort();
                let mut groups: Vec<_> = shared.iter().map(|(f, _, _)| f.clone()).collect();
                groups.dedup();
                prop_assert_eq!(groups.len(), shared.len(), "one pick per group");
                let mut expected: Vec<_> = reference
                    .keys()
                    .filter(|(f, _)| match parse_shared(f) {
                        Some(Ok(s)) => matches(s.filter, topic),
                        _ => false,
                    })
                    .map(|(f, _)| f.clone())
                    .collect();
                expected.dedup();
                prop_assert_eq!(groups, expected);
                for (filter, group, key) in shared {
                    prop_assert!(reference.contains_key(&(filter.clone(), key)));
                    let prefix = format!("$share/{group}/");
                    prop_assert!(filter.starts_with(&prefix));
                }
            }
            for (filter, key) in reference.keys() {
                prop_assert!(tree.unsubscribe(filter, key).is_some());
            }
            prop_assert!(tree.is_empty());
            prop_assert_eq!(tree.node_count(), 0);
        }
    }
}
