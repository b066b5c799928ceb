//! Topic matching both halves use: the subscription trie (which filters a topic reaches,
//! for subscribers and for Kafka mappings alike) and the retained-message store (which
//! topics a filter reaches). Plain single-threaded data on top of [`crate::protocol`].

pub mod retained;
pub mod tree;

pub use retained::RetainedStore;
pub use tree::{Match, SubscriptionTree};
