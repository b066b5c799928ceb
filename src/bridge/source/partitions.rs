//! Offsets of the partitions a source has been assigned: which records are out at the
//! shards, which offset may be committed, and when a partition must pause or go back.
//!
//! Plain data, driven by the consumer thread, tested without Kafka. The rules:
//! - the offset committed is the lowest one not yet delivered: records are handed over in
//!   offset order but their outcomes come back in any order (from several shards);
//! - a refused record (a session full) sends its partition back to it: nothing more of the
//!   partition is read until every record out is settled, then the consumer seeks there and
//!   waits a back-off before it reads again. Records after it that were delivered are
//!   delivered again (duplicates, never losses, never out of order);
//! - at most `in_flight_max` records of a partition are out; the partition is paused at that
//!   bound and resumed at half of it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::receipt::Position;

/// First wait after a refusal; doubled on each refusal in a row, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
    pub slot: u64,
    pub generation: u32,
    /// The next offset expected from Kafka; None until the first record.
    next: Option<i64>,
    /// Records handed to the shards whose outcome has not come back.
    out: BTreeSet<i64>,
    /// The lowest refused offset, when the partition must go back.
    rewind: Option<i64>,
    backoff: Duration,
    /// Not to be read before this (after a rewind).
    resume_at: Option<Instant>,
    /// Held at the in-flight bound.
    full: bool,
    /// The offset last committed (or sent to be committed).
    committed: Option<i64>,
}

impl Partition {
    /// The offset to commit: everything below it was delivered. None before the first record.
    pub fn commit_position(&self) -> Option<i64> {
        let mut position = self.next?;
        if let Some(&first) = self.out.first() {
            position = position.min(first);
        }
        if let Some(rewind) = self.rewind {
            position = position.min(rewind);
        }
        Some(position)
    }

    /// The commit position when it moved since the last call.
    pub fn take_commit(&mut self) -> Option<i64> {
        let position = self.commit_position()?;
        if self.committed == Some(position) {
            return None;
        }
        self.committed = Some(position);
        Some(position)
    }

    /// The last commit failed: the next one sends the position again.
    pub fn commit_failed(&mut self) {
        self.committed = None;
    }

    /// Whether reading must stop now: going back, waiting after going back, or at the bound.
    pub fn should_pause(&self, now: Instant) -> bool {
        self.rewind.is_some() || self.resume_at.is_some_and(|at| at > now) || self.full
    }

    /// The offset to seek to, once a refused partition has nothing left out.
    pub fn due_rewind(&self) -> Option<i64> {
        self.rewind.filter(|_| self.out.is_empty())
    }

    /// The consumer sought back to the refused offset; reading resumes after the back-off.
    pub fn rewound(&mut self, now: Instant) {
        if let Some(offset) = self.rewind.take() {
            self.next = Some(offset);
            self.resume_at = Some(now + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    pub fn records_out(&self) -> usize {
        self.out.len()
    }
}

/// The assigned partitions of one source.
#[derive(Debug)]
pub struct Partitions {
    source: u16,
    in_flight_max: usize,
    by_name: HashMap<(String, i32), Partition>,
    /// Slot → name, for outcomes.
    names: HashMap<u64, (String, i32)>,
    next_slot: u64,
    next_generation: u32,
}

/// What to do with a record just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Hand it over with this position.
    Hand(Position),
    /// Skip it: its partition is going back, or it was read before (a stale fetch).
    Skip,
}

impl Partitions {
    pub fn new(source: u16, in_flight_max: usize) -> Partitions {
        Partitions {
            source,
            in_flight_max: in_flight_max.max(1),
            by_name: HashMap::new(),
            names: HashMap::new(),
            next_slot: 0,
            next_generation: 0,
        }
    }

    /// The partition is ours now (a rebalance assigned it).
    pub fn assign(&mut self, topic: &str, partition: i32) {
        let name = (topic.to_string(), partition);
        if self.by_name.contains_key(&name) {
            return;
        }
        let slot = (u64::from(self.source) << 48) | self.next_slot;
        self.next_slot += 1;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.names.insert(slot, name.clone());
        self.by_name.insert(
            name,
            Partition {
                topic: topic.to_string(),
                partition,
                slot,
                generation: self.next_generation,
                next: None,
                out: BTreeSet::new(),
                rewind: None,
                backoff: BACKOFF_MIN,
                resume_at: None,
                full: false,
                committed: None,
            },
        );
    }

    /// The partition is no longer ours; returns it (for a last commit).
    pub fn revoke(&mut self, topic: &str, partition: i32) -> Option<Partition> {
        let gone = self.by_name.remove(&(topic.to_string(), partition))?;
        self.names.remove(&gone.slot);
        Some(gone)
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<&Partition> {
        self.by_name.get(&(topic.to_string(), partition))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Partition> {
        self.by_name.values_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Partition> {
        self.by_name.values()
    }

    /// A record read from Kafka.
    pub fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Read {
        let Some(p) = self.by_name.get_mut(&(topic.to_string(), partition)) else {
            return Read::Skip;
        };
        if p.rewind.is_some() || p.next.is_some_and(|next| offset < next) {
            return Read::Skip;
        }
        p.next = Some(offset + 1);
        p.out.insert(offset);
        if p.out.len() >= self.in_flight_max {
            p.full = true;
        }
        Read::Hand(Position {
            partition: p.slot,
            generation: p.generation,
            offset,
        })
    }

    /// A record's outcome came back; false when its partition is no longer ours (or was
    /// assigned again since).
    pub fn settle(&mut self, position: Position, refused: bool) -> bool {
        let Some(name) = self.names.get(&position.partition) else {
            return false;
        };
        let Some(p) = self.by_name.get_mut(name) else {
            return false;
        };
        if p.generation != position.generation || !p.out.remove(&position.offset) {
            return false;
        }
        if refused {
            p.rewind = Some(p.rewind.map_or(position.offset, |r| r.min(position.offset)));
        } else if p.rewind.is_none() && p.out.is_empty() {
            // A delivery went through with nothing refused: the partition is healthy again.
            p.backoff = BACKOFF_MIN;
        }
        if p.full && p.out.len() * 2 <= self.in_flight_max {
            p.full = false;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand(partitions: &mut Partitions, offset: i64) -> Position {
        match partitions.read("t", 0, offset) {
            Read::Hand(position) => position,
            Read::Skip => panic!("offset {offset} skipped"),
        }
    }

    #[test]
    fn commits_below_the_lowest_record_still_out() {
        let mut partitions = Partitions::new(1, 100);
        partitions.assign("t", 0);
        let positions: Vec<_> = (5..10).map(|o| hand(&mut partitions, o)).collect();
        assert_eq!(positions[0].partition >> 48, 1, "the source is in the slot");
        // Outcomes in any order: 7 and 5 first, then 6.
        assert!(partitions.settle(positions[2], false));
        assert!(partitions.settle(positions[0], false));
        let p = partitions.iter_mut().next().unwrap();
        assert_eq!(p.take_commit(), Some(6));
        assert_eq!(p.take_commit(), None, "not moved");
        assert!(partitions.settle(positions[1], false));
        assert!(partitions.settle(positions[3], false));
        assert!(partitions.settle(positions[4], false));
        let p = partitions.iter_mut().next().unwrap();
        assert_eq!(p.take_commit(), Some(10), "all delivered: the next to read");
    }

    #[test]
    fn a_refusal_goes_back_to_it_after_everything_out_is_settled() {
        let mut partitions = Partitions::new(0, 100);
        partitions.assign("t", 0);
        let positions: Vec<_> = (0..4).map(|o| hand(&mut partitions, o)).collect();
        let now = Instant::now();
        assert!(partitions.settle(positions[1], true));
        assert_eq!(
            partitions.read("t", 0, 4),
            Read::Skip,
            "going back: read nothing"
        );
        let p = partitions.get("t", 0).unwrap();
        assert!(p.should_pause(now));
        assert_eq!(p.due_rewind(), None, "records 0, 2, 3 still out");
        assert_eq!(p.commit_position(), Some(0));
        for position in [positions[0], positions[2], positions[3]] {
            assert!(partitions.settle(position, false));
        }
        let p = partitions.iter_mut().next().unwrap();
        assert_eq!(p.due_rewind(), Some(1));
        assert_eq!(p.take_commit(), Some(1), "0 delivered, 1 refused");
        p.rewound(now);
        assert!(p.should_pause(now), "backing off");
        assert!(!p.should_pause(now + BACKOFF_MAX));
        // Read again from 1: 1, 2, 3 are handed over once more (2 and 3 are duplicates).
        assert_eq!(hand(&mut partitions, 1).offset, 1);
    }

    #[test]
    fn pauses_at_the_bound_and_resumes_at_half() {
        let mut partitions = Partitions::new(0, 4);
        partitions.assign("t", 0);
        let positions: Vec<_> = (0..4).map(|o| hand(&mut partitions, o)).collect();
        let now = Instant::now();
        assert!(partitions.get("t", 0).unwrap().should_pause(now));
        assert!(partitions.settle(positions[0], false));
        assert!(
            partitions.get("t", 0).unwrap().should_pause(now),
            "3 out of 4"
        );
        assert!(partitions.settle(positions[1], false));
        assert!(
            !partitions.get("t", 0).unwrap().should_pause(now),
            "2 out of 4"
        );
    }

    #[test]
    fn outcomes_from_before_a_reassignment_are_ignored() {
        let mut partitions = Partitions::new(0, 100);
        partitions.assign("t", 0);
        let old = hand(&mut partitions, 0);
        assert!(partitions.revoke("t", 0).is_some());
        assert!(!partitions.settle(old, false));
        partitions.assign("t", 0);
        assert!(!partitions.settle(old, false), "another generation");
        assert_eq!(
            partitions.read("t", 0, 0),
            Read::Hand(Position {
                offset: 0,
                ..hand_position(&partitions)
            })
        );
    }

    fn hand_position(partitions: &Partitions) -> Position {
        let p = partitions.get("t", 0).unwrap();
        Position {
            partition: p.slot,
            generation: p.generation,
            offset: 0,
        }
    }

    #[test]
    fn a_stale_record_is_skipped() {
        let mut partitions = Partitions::new(0, 100);
        partitions.assign("t", 0);
        hand(&mut partitions, 10);
        assert_eq!(partitions.read("t", 0, 9), Read::Skip);
        assert_eq!(partitions.read("t", 0, 10), Read::Skip);
        assert!(
            matches!(partitions.read("t", 0, 12), Read::Hand(_)),
            "a gap (compaction, markers) is fine"
        );
    }
}
