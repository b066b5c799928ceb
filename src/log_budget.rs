//! At most one log line per interval for a failure that can repeat thousands of times a
//! second (failed TLS handshakes, failed accepts), and the count of those left out, so the
//! next line can say how many there were.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
pub struct LogBudget {
    last: Option<Instant>,
    /// Occurrences since the last line, not logged.
    unlogged: u64,
}

impl LogBudget {
    pub const fn new() -> LogBudget {
        LogBudget {
            last: None,
            unlogged: 0,
        }
    }

    /// One more occurrence at `now`: `Some(n)` when a line is due (`n` occurrences were left
    /// out since the last one), `None` when the last line is less than `interval` old.
    pub fn admit(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < interval)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// The end of a line that follows `unlogged` left-out ones: empty when there were none.
pub fn unlogged_suffix(unlogged: u64) -> String {
    if unlogged > 0 {
        format!("; {unlogged} more like it since the last such line")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_left_out() {
        let interval = Duration::from_secs(10);
        let start = Instant::now();
        let mut budget = LogBudget::new();
        assert_eq!(budget.admit(start, interval), Some(0));
        assert_eq!(budget.admit(start + Duration::from_secs(1), interval), None);
        assert_eq!(budget.admit(start + Duration::from_secs(9), interval), None);
        assert_eq!(
            budget.admit(start + Duration::from_secs(10), interval),
            Some(2)
        );
        assert_eq!(
            unlogged_suffix(2),
            "; 2 more like it since the last such line"
        );
        assert_eq!(unlogged_suffix(0), "");
    }
}
