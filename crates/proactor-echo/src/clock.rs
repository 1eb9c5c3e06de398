//! A coarse clock for idle timeouts: the main thread advances it on every tick, and workers
//! read it with one atomic load instead of asking the OS for the time on every message
//! (`QueryPerformanceCounter` on Windows, `clock_gettime` on Linux).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Milliseconds since a fixed start, as of the last [`Clock::tick`].
pub struct Clock {
    start: Instant,
    millis: AtomicU64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    /// Moves the clock to the real time.
    pub fn tick(&self) {
        let millis = self.start.elapsed().as_millis() as u64;
        self.millis.fetch_max(millis, Ordering::Relaxed);
    }

    /// The time of the last tick: behind the real time by at most one tick.
    pub fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stands_still_between_ticks_and_follows_real_time_on_tick() {
        let clock = Clock::new();
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now(), before, "no tick, no change");
        clock.tick();
        let after = clock.now();
        assert!(after >= before + Duration::from_millis(20));
        assert!(after <= Instant::now());
    }
}
