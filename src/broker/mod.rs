//! The shard-owned broker state: subscriptions and retained messages.

pub mod retained;
pub mod topic_tree;
