//! The time limit of one lcrun call. `--timeout` bounds the whole call, not
//! only the command: evaluating the cache-by expressions, waiting for an
//! identical run and the command share one deadline, and each step gets
//! what the steps before it left.

use std::time::{Duration, Instant};

/// When the call must end, if it has a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Deadline {
    at: Option<Instant>,
    limit: Option<Duration>,
}

impl Deadline {
    /// A deadline `limit` from now; none when `limit` is `None`.
    pub fn after(limit: Option<Duration>) -> Deadline {
        Deadline {
            // A limit too far away to represent is no limit.
            at: limit.and_then(|l| Instant::now().checked_add(l)),
            limit,
        }
    }

    /// The instant it expires, if any.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// The limit as the user gave it, for messages.
    pub fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// What is left of it; `Some(ZERO)` once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether it has passed.
    pub fn expired(&self) -> bool {
        self.remaining().is_some_and(|left| left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_never_expires_and_zero_has_expired() {
        assert!(!Deadline::after(None).expired());
        assert_eq!(Deadline::after(None).remaining(), None);
        assert!(Deadline::after(Some(Duration::ZERO)).expired());
        let far = Deadline::after(Some(Duration::from_secs(3600)));
        assert!(!far.expired());
        assert!(far.remaining().unwrap() > Duration::from_secs(3500));
    }
}
