//! What the metrics count per Kafka mapping. The bridge fills these in; the endpoint and
//! `$SYS` read them.

/// What becomes of a record Kafka refused for good, as the metrics name it: the names of
/// `kafka.mappings[].on_refused`, in the order [`MappingCounters::refused`] keeps them
/// (the bridge checks that its settings agree).
pub const REFUSED_ACTIONS: [&str; 3] = ["reason_code", "dead_letter", "drop"];

/// Counters of one mapping (index = mapping index).
#[derive(Debug, Default, Clone, Copy)]
pub struct MappingCounters {
    pub matched: u64,
    pub produced: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub dropped_ring_full: u64,
    /// Records Kafka refused for good, by [`RefusedReason`] and by what became of them
    /// ([`REFUSED_ACTIONS`] order).
    pub refused: [[u64; REFUSED_ACTIONS.len()]; RefusedReason::ALL.len()],
    /// Dead-letter records Kafka acknowledged.
    pub dead_lettered: u64,
}

/// Why Kafka refused a record for good, as the metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    TooLarge,
    InvalidTopic,
    NotAuthorized,
    PolicyViolation,
    InvalidRecord,
}

impl RefusedReason {
    pub const ALL: [RefusedReason; 5] = [
        RefusedReason::TooLarge,
        RefusedReason::InvalidTopic,
        RefusedReason::NotAuthorized,
        RefusedReason::PolicyViolation,
        RefusedReason::InvalidRecord,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReason::TooLarge => "too_large",
            RefusedReason::InvalidTopic => "invalid_topic",
            RefusedReason::NotAuthorized => "not_authorized",
            RefusedReason::PolicyViolation => "policy_violation",
            RefusedReason::InvalidRecord => "invalid_record",
        }
    }
}
