use chrono::{DateTime, Duration, DurationRound, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from. Use-cases receive `now` from their caller, who reads it
/// here once per request, so one request sees one instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// Instants are kept to the microsecond: what PostgreSQL stores, so a value read
/// back equals the value written.
pub fn to_stored_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::microseconds(1)).unwrap_or(t)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_stored_precision(Utc::now())
    }
}

/// The system clock plus an offset that only moves forward (DAYPASS_TEST_CLOCK=1).
#[derive(Debug, Default)]
pub struct TestClock {
    offset_micros: AtomicI64,
}

impl TestClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward and returns the new now.
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        let micros = by.num_microseconds().unwrap_or(i64::MAX / 2);
        self.offset_micros.fetch_add(micros, Ordering::SeqCst);
        self.now()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        let offset = Duration::microseconds(self.offset_micros.load(Ordering::SeqCst));
        to_stored_precision(Utc::now() + offset)
    }
}
