//! The other nodes of a cluster as the shard routes to them: their interest (which node
//! has subscribers for which filter), and the choice of one member for a shared group with
//! members both here and elsewhere.

use std::sync::Arc;

use crate::cluster::NodeId;
use crate::topic::Match;

use super::{LocalTargets, RemoteTargets, Shard};

/// Whose turn it is in a shared group with members on this node and on others.
#[derive(Debug, Default)]
pub struct SharedTurns {
    /// Other nodes seen with members of the group.
    nodes: std::collections::HashSet<NodeId>,
    /// 0: this node's turn; 1..=nodes: another node's (the one the trie picks).
    next: usize,
}

impl Shard {
    /// Node `node` (named `name`) now has, or no longer has, subscribers for `filter`.
    pub fn apply_node_interest(
        &mut self,
        node: NodeId,
        name: &Arc<str>,
        filter: &str,
        added: bool,
    ) {
        if self.node_names.len() <= node {
            self.node_names.resize(node + 1, Arc::from(""));
        }
        self.node_names[node] = name.clone();
        if added {
            self.remote_interest.subscribe(filter, node, ());
        } else {
            self.remote_interest.unsubscribe(filter, &node);
        }
    }

    /// Filters other nodes have subscribers for, counted per node.
    pub fn node_interest_len(&self) -> usize {
        self.remote_interest.len()
    }

    /// Adds the other nodes that want a message on `topic` to `targets`. A shared group
    /// with members here and elsewhere gives this node one turn in every `1 + other nodes`:
    /// one member in the whole cluster gets each message. `$` topics (`$SYS`) are
    /// each node's own and stay on it.
    pub(super) fn add_nodes(
        &mut self,
        topic: &str,
        local: &mut LocalTargets,
        targets: &mut RemoteTargets,
    ) {
        if self.remote_interest.is_empty() || topic.starts_with('$') {
            return;
        }
        let mut shared: Vec<(String, NodeId)> = Vec::new();
        let mut ordinary = false;
        self.remote_interest.for_each_match(topic, |m| match m {
            Match::Normal { .. } => ordinary = true,
            Match::Shared { group, key, .. } => shared.push((group.to_string(), *key)),
        });
        targets.nodes_ordinary = ordinary;
        for (group, node) in shared {
            let here = local.shared_groups.contains(&group)
                || targets.shared.iter().any(|(_, g)| *g == group);
            if here {
                // One turn for this node, one for each other node seen with members: the
                // trie picks the next node on every walk, so a fixed alternation would
                // always skip the same ones.
                let turns = self.shared_turns.entry(group.clone()).or_default();
                turns.nodes.insert(node);
                turns.next = (turns.next + 1) % (turns.nodes.len() + 1);
                if turns.next == 0 {
                    continue;
                }
                local.shared_groups.retain(|g| *g != group);
                targets.shared.retain(|(_, g)| *g != group);
            }
            let name = self
                .node_names
                .get(node)
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            targets.nodes_shared.push((group, name));
        }
    }
}
