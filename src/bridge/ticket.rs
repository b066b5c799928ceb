//! The tag every Kafka record carries through librdkafka and back in its delivery report,
//! packed into the report's opaque (one machine word, no allocation per record): who waits
//! for the record, which mapping made it, and whether it is a dead letter.
//!
//! Layout of the 64-bit opaque, high to low:
//!
//! | bits | field |
//! |---:|---|
//! | 2 | [`Waiter`] kind: nobody, a PUBLISH's ticket, a spooled record |
//! | 46 | the ticket number, or the spooled record's sequence number |
//! | 1 | dead letter |
//! | 15 | mapping index ([`MAPPING_NONE`]: a mapping no longer configured) |
//!
//! The widths are checked at compile time below; a value too wide for its field is a bug
//! caught by a debug assertion (tickets wrap within their field by construction).

/// Bits of the mapping index.
const MAPPING_BITS: u32 = 15;
/// Bits of the dead-letter flag.
const DEAD_LETTER_BITS: u32 = 1;
/// Bits of the ticket or sequence number.
const VALUE_BITS: u32 = 46;
/// Bits of the waiter's kind.
const KIND_BITS: u32 = 2;

const _: () = assert!(
    MAPPING_BITS + DEAD_LETTER_BITS + VALUE_BITS + KIND_BITS == 64,
    "the tag fills one 64-bit word exactly"
);
const _: () = assert!(
    usize::BITS >= 64,
    "librdkafka's opaque is a pointer: the tag needs 64-bit pointers"
);
const _: () = assert!(3 < 1 << KIND_BITS, "three waiter kinds fit their field");

const MAPPING_MASK: u64 = (1 << MAPPING_BITS) - 1;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const DEAD_LETTER_SHIFT: u32 = MAPPING_BITS;
const VALUE_SHIFT: u32 = MAPPING_BITS + DEAD_LETTER_BITS;
const KIND_SHIFT: u32 = VALUE_SHIFT + VALUE_BITS;

/// The mapping index of a record whose mapping is no longer configured (a spooled record
/// replayed after a reconfiguration): counted under no mapping.
pub const MAPPING_NONE: u16 = MAPPING_MASK as u16;
/// The most mappings a broker may have: every index below [`MAPPING_NONE`].
pub const MAPPINGS_MAX: usize = MAPPING_NONE as usize;

/// The acknowledgement of one PUBLISH: due when every record counted towards it has been
/// reported (or, for `durable`, flushed to the spool). Never 0; wraps within its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Ticket {
    pub const FIRST: Ticket = Ticket(1);

    /// The ticket after this one (1 again after the largest).
    pub fn next(self) -> Ticket {
        Ticket((self.0 & VALUE_MASK) % VALUE_MASK + 1)
    }

    /// The number, for logs and tests.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Who waits for a record's delivery report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiter {
    /// Nobody (QoS 0, or `ack = "none"`): the report only feeds the counters.
    Nobody,
    /// A PUBLISH's acknowledgement.
    Publish(Ticket),
    /// A record read back from the spool, by its sequence number: its segment may go once
    /// Kafka has every record of it.
    Spool(u64),
}

/// What a record carries through librdkafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub waiter: Waiter,
    /// The mapping that made the record, below [`MAPPINGS_MAX`], or [`MAPPING_NONE`].
    pub mapping: u16,
    /// A record Kafka refused, on its way to the mapping's dead-letter topic.
    pub dead_letter: bool,
}

impl Tag {
    pub fn pack(self) -> usize {
        let (kind, value) = match self.waiter {
            Waiter::Nobody => (0, 0),
            Waiter::Publish(ticket) => (1, ticket.0),
            Waiter::Spool(seq) => (2, seq),
        };
        debug_assert!(
            value <= VALUE_MASK,
            "{value} does not fit {VALUE_BITS} bits"
        );
        debug_assert!(u64::from(self.mapping) <= MAPPING_MASK);
        ((kind << KIND_SHIFT)
            | ((value & VALUE_MASK) << VALUE_SHIFT)
            | (u64::from(self.dead_letter) << DEAD_LETTER_SHIFT)
            | (u64::from(self.mapping) & MAPPING_MASK)) as usize
    }

    pub fn unpack(opaque: usize) -> Tag {
        let word = opaque as u64;
        let value = (word >> VALUE_SHIFT) & VALUE_MASK;
        Tag {
            waiter: match word >> KIND_SHIFT {
                1 => Waiter::Publish(Ticket(value)),
                2 => Waiter::Spool(value),
                _ => Waiter::Nobody,
            },
            mapping: (word & MAPPING_MASK) as u16,
            dead_letter: (word >> DEAD_LETTER_SHIFT) & 1 == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_comes_back_as_it_went_in() {
        let largest = Ticket(VALUE_MASK);
        for waiter in [
            Waiter::Nobody,
            Waiter::Publish(Ticket::FIRST),
            Waiter::Publish(largest),
            Waiter::Spool(0),
            Waiter::Spool(VALUE_MASK),
        ] {
            for mapping in [0, 1, MAPPINGS_MAX as u16 - 1, MAPPING_NONE] {
                for dead_letter in [false, true] {
                    let tag = Tag {
                        waiter,
                        mapping,
                        dead_letter,
                    };
                    assert_eq!(Tag::unpack(tag.pack()), tag);
                }
            }
        }
    }

    #[test]
    fn tickets_wrap_within_their_field_and_skip_zero() {
        assert_eq!(Ticket::FIRST.next(), Ticket(2));
        assert_eq!(Ticket(VALUE_MASK).next(), Ticket::FIRST);
    }
}
