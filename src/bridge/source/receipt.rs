//! How a record says it was handed over: a [`Receipt`] travels with it to every shard that
//! delivers it. Each holder finishes its copy (delivered there) or drops it (not delivered:
//! refused for a full session, or the broker shutting down). When the last copy is gone,
//! the record's outcome goes back to its source's consumer thread, which commits the
//! offset only if no holder refused it.
//!
//! Dropping without finishing means "not delivered", so that a record lost on the way (a
//! shard's channel closed at shutdown, a panic) is never committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam::queue::SegQueue;

/// Where a record comes from: enough for its source to find its partition again, and for a
/// shard to keep a partition's records in order ([`Position::partition`] is unique per
/// process: source and partition in one number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The source's partition slot ([`super::partitions`]), with the source's index in the
    /// high 16 bits: a key for "the records of this partition" across the broker.
    pub partition: u64,
    /// Bumped each time the partition is assigned to this process: outcomes of records
    /// read before a rebalance are ignored after it.
    pub generation: u32,
    pub offset: i64,
}

/// A record's outcome, back at its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub position: Position,
    /// Some holder did not deliver it: the partition goes back to this offset.
    pub refused: bool,
    /// It matched at least one subscription somewhere.
    pub routed: bool,
}

/// Outcomes waiting for the consumer thread. Unbounded as a queue, bounded by what is in
/// flight: each source keeps at most `in_flight_max` records per partition out.
pub type Outcomes = Arc<SegQueue<Outcome>>;

struct Shared {
    position: Position,
    refused: AtomicBool,
    routed: AtomicBool,
    outcomes: Outcomes,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.outcomes.push(Outcome {
            position: self.position,
            refused: self.refused.load(Ordering::Acquire),
            routed: self.routed.load(Ordering::Acquire),
        });
    }
}

/// One holder's share of a record's outcome; see the module documentation.
pub struct Receipt {
    shared: Arc<Shared>,
    finished: bool,
}

impl Receipt {
    pub fn new(position: Position, outcomes: Outcomes) -> Receipt {
        Receipt {
            shared: Arc::new(Shared {
                position,
                refused: AtomicBool::new(false),
                routed: AtomicBool::new(false),
                outcomes,
            }),
            finished: false,
        }
    }

    pub fn position(&self) -> Position {
        self.shared.position
    }

    /// Another holder's share (a shard the record is forwarded to).
    pub fn share(&self) -> Receipt {
        Receipt {
            shared: self.shared.clone(),
            finished: false,
        }
    }

    /// Handed to this holder's subscriptions; `routed` when at least one matched.
    pub fn finish(mut self, routed: bool) {
        if routed {
            self.shared.routed.store(true, Ordering::Release);
        }
        self.finished = true;
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.refused.store(true, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Receipt({:?})", self.shared.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(offset: i64) -> Position {
        Position {
            partition: 3,
            generation: 1,
            offset,
        }
    }

    #[test]
    fn the_outcome_comes_back_once_every_share_is_gone() {
        let outcomes = Outcomes::default();
        let receipt = Receipt::new(position(10), outcomes.clone());
        let other = receipt.share();
        receipt.finish(false);
        assert!(outcomes.pop().is_none(), "one share is still out");
        other.finish(true);
        assert_eq!(
            outcomes.pop(),
            Some(Outcome {
                position: position(10),
                refused: false,
                routed: true
            })
        );
    }

    #[test]
    fn a_share_dropped_unfinished_refuses_the_record() {
        let outcomes = Outcomes::default();
        let receipt = Receipt::new(position(11), outcomes.clone());
        let lost = receipt.share();
        drop(lost);
        receipt.finish(true);
        let outcome = outcomes.pop().expect("outcome");
        assert!(outcome.refused);
    }
}
