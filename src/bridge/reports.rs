//! Delivery reports: each one counted, and moved on to the acknowledgement it belongs to.
//! A record Kafka refused for good goes the way its mapping's `on_refused` says (a reason
//! code, a dead letter, or dropped); one a replaced producer handed back is sent again.

use std::time::Instant;

use bytes::Bytes;
use rdkafka::error::RDKafkaErrorCode;

use crate::metrics::RefusedReason;

use super::mapping::OnRefused;
use super::producer::{is_purged, is_refused_for_good, Record, RefusedRecord, Report};
use super::records::{refused_reason, resend, shorter_letter, DEAD_LETTER_PAYLOAD_MAX};
use super::state::ShardBridge;
use super::ticket::{Tag, Waiter};
use super::Completed;

impl ShardBridge {
    /// Serves the producers' delivery reports; returns the acknowledgements now due.
    pub fn drain_reports(&mut self, now: Instant) -> Vec<Completed> {
        let mut reports = Vec::new();
        for (cluster, lane) in self.lanes.iter_mut().enumerate() {
            lane.producer.serve_reports();
            if lane.producer.has_fatal_error() {
                lane.replace_producer();
            }
            while let Some(report) = lane.producer.pop_report() {
                reports.push((cluster, report));
            }
        }
        let mut completed = Vec::new();
        for (cluster, report) in reports {
            self.apply_report(cluster, report, now, &mut completed);
        }
        completed
    }

    /// Counts one delivery report and moves its acknowledgement on.
    pub(super) fn apply_report(
        &mut self,
        cluster: usize,
        report: Report,
        now: Instant,
        completed: &mut Vec<Completed>,
    ) {
        let Report {
            tag,
            mut result,
            refused,
        } = report;
        let refused = match (result, refused) {
            (Err(code), Some(record)) if is_purged(code) => {
                // Handed over by a producer replaced with new settings: send it again.
                self.append(cluster, resend(*record, tag), now);
                return;
            }
            (_, refused) => refused,
        };
        if let Some(c) = self.counters.get_mut(usize::from(tag.mapping)) {
            match (result, tag.dead_letter) {
                (Ok(()), false) => c.acknowledged += 1,
                (Ok(()), true) => c.dead_lettered += 1,
                (Err(_), _) => c.failed += 1,
            }
        }
        if let Err(code) = result {
            if !tag.dead_letter && is_refused_for_good(code) {
                match self.refused(cluster, tag, code, refused, now) {
                    // The acknowledgement now waits for the dead letter's own report.
                    None => return,
                    Some(outcome) => result = outcome,
                }
            } else if tag.dead_letter && refused_reason(code) == RefusedReason::TooLarge {
                // The dead-letter topic takes less than the letter: cut its payload in half
                // and send it again, down to a floor.
                if let Some(letter) = refused.and_then(|r| shorter_letter(*r, tag)) {
                    self.append(cluster, letter, now);
                    return;
                }
            }
        }
        match tag.waiter {
            // From the spool: Kafka has it (or refused it for good; then it is counted as
            // failed, the device was acknowledged long ago).
            Waiter::Spool(seq) => self.spool_acked(seq),
            Waiter::Publish(ticket) => {
                self.count_down(ticket, result, now, completed, Some(cluster))
            }
            Waiter::Nobody => {}
        }
    }

    /// Kafka refused a record for good (`code`), bound for `cluster`. Returns the result
    /// its acknowledgement counts with, or None when a dead letter now carries the ticket.
    fn refused(
        &mut self,
        cluster: usize,
        tag: Tag,
        code: RDKafkaErrorCode,
        record: Option<Box<RefusedRecord>>,
        now: Instant,
    ) -> Option<Result<(), RDKafkaErrorCode>> {
        let mapping = usize::from(tag.mapping);
        let Some(m) = self.mappings.as_slice().get(mapping) else {
            // A spooled record of a mapping no longer configured.
            return Some(Err(code));
        };
        let (on_refused, dead_letter) = (m.on_refused, m.dead_letter.clone());
        let reason = refused_reason(code) as usize;
        let action = match (on_refused, dead_letter, record) {
            (OnRefused::DeadLetter, Some(destination), Some(record)) => {
                let letter =
                    self.dead_letter_record(cluster, tag, code, *record, destination.topic);
                self.append(destination.cluster_index, letter, now);
                self.counters[mapping].refused[reason][OnRefused::DeadLetter.index()] += 1;
                return None;
            }
            (OnRefused::Drop, _, _) => OnRefused::Drop,
            // A dead letter needs the record; librdkafka gives it back with every report,
            // so this is only a safety net.
            _ => OnRefused::ReasonCode,
        };
        self.counters[mapping].refused[reason][action.index()] += 1;
        Some(match action {
            OnRefused::Drop => Ok(()),
            _ => Err(code),
        })
    }

    /// The dead letter of a record Kafka refused: the same key, payload (cut to
    /// [`DEAD_LETTER_PAYLOAD_MAX`]) and headers, plus headers saying where it was going,
    /// why it was refused and, when known, its MQTT topic and client id.
    fn dead_letter_record(
        &self,
        cluster: usize,
        tag: Tag,
        code: RDKafkaErrorCode,
        record: RefusedRecord,
        topic: String,
    ) -> Record {
        let mut letter = resend(
            record,
            Tag {
                dead_letter: true,
                ..tag
            },
        );
        let target = std::mem::replace(&mut letter.topic, topic);
        let headers = &mut letter.headers;
        let waiting = match tag.waiter {
            Waiter::Publish(ticket) => self.pending.get(&ticket),
            _ => None,
        };
        if let Some(ack) = waiting {
            for (name, value) in [("mqtt_topic", &ack.topic), ("client_id", &ack.client_id)] {
                if !headers.iter().any(|(n, _)| *n == name) {
                    headers.push((name, value.as_bytes().clone()));
                }
            }
        }
        headers.push((
            "dead_letter_error",
            Bytes::from(format!("{code:?}: {code}")),
        ));
        headers.push(("dead_letter_topic", Bytes::from(target)));
        headers.push((
            "dead_letter_cluster",
            Bytes::from(self.mappings.cluster_names()[cluster].clone()),
        ));
        if letter.payload.len() > DEAD_LETTER_PAYLOAD_MAX {
            headers.push((
                "dead_letter_payload_bytes",
                Bytes::from(letter.payload.len().to_string()),
            ));
            letter.payload.truncate(DEAD_LETTER_PAYLOAD_MAX);
        }
        letter
    }
}
