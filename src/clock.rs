//! Injectable time source.
//!
//! Nothing in Waypoint reads the wall clock directly: tests and accelerated
//! simulations set the server's notion of "now" so that validation (e.g. the
//! future-timestamp guard) and receive times are deterministic.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

/// A source of the current time, shared by every stage.
pub trait Clock: Send + Sync + 'static {
    /// The current instant in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// Shared handle to whichever clock the application was built with.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Microseconds, as PostgreSQL stores them: a time read back equals the
    /// time written, and SQLite (which would keep the nanoseconds as text)
    /// holds exactly what PostgreSQL holds.
    fn now(&self) -> DateTime<Utc> {
        use chrono::SubsecRound;
        Utc::now().trunc_subsecs(6)
    }
}

/// A clock that only moves when told to; for tests and simulated time.
#[derive(Debug)]
pub struct ManualClock {
    /// Microseconds since the Unix epoch; atomic so readers never block.
    micros: AtomicI64,
}

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            micros: AtomicI64::new(start.timestamp_micros()),
        }
    }

    /// Moves the clock to `t` (may go backwards: tests decide).
    pub fn set(&self, t: DateTime<Utc>) {
        self.micros.store(t.timestamp_micros(), Ordering::SeqCst);
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: TimeDelta) {
        let step = d.num_microseconds().unwrap_or(i64::MAX);
        self.micros.fetch_add(step, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.micros.load(Ordering::SeqCst))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t0 = DateTime::from_timestamp_millis(1_764_133_200_000).unwrap();
        let c = ManualClock::new(t0);
        assert_eq!(c.now(), t0);
        c.advance(TimeDelta::seconds(90));
        assert_eq!(c.now(), t0 + TimeDelta::seconds(90));
    }
}
