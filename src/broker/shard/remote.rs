//! The other nodes of a cluster as the shard routes to them: their interest (which node
//! has subscribers for which filter), and the choice of one member for a shared group with
//! members both here and elsewhere.

use std::sync::Arc;

use crate::cluster::NodeId;
use crate::topic::Match;

use super::{LocalTargets, RemoteTargets, Shard};

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
    /// with members here and elsewhere alternates between this node's choice and another
    /// node's: one member in the whole cluster gets each message. `$` topics (`$SYS`) are
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
                let turn = self.shared_turns.entry(group.clone()).or_insert(false);
                *turn = !*turn;
                if !*turn {
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
