//! Accepting through resource exhaustion, as decisions without I/O (the server acts on them).
//!
//! A failed accept (out of descriptors: `EMFILE`, `ENFILE`, `WSAEMFILE` 10024; out of buffers or
//! memory: `ENOBUFS`, `ENOMEM`, `WSAENOBUFS` 10055; anything else the OS reports; clients that
//! went away are absorbed by proactor) is not re-issued at once: with clients queued, the next
//! accept would fail the same way at once, a spinning core and a line of log per turn. Instead
//! accepting pauses. The server keeps serving the connections it has; at each retry time it
//! issues one accept, a probe, waiting 10 ms, then twice as long after each failed probe, up to
//! 1 s. The first accept that succeeds once a probe was issued (the probe, or one still pending
//! from before) ends the pause, and the accepts that were held back are issued again.
//!
//! Logging is bounded: one warning when a pause starts and one line when accepting resumes, with
//! how many retries it took; a pause that starts less than [`WARN_EVERY`] after the last warning
//! is logged at DEBUG (the next warning says how many there were).

use std::time::{Duration, Instant};

/// The wait before the first retry.
pub const FIRST_DELAY: Duration = Duration::from_millis(10);
/// The longest wait between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(1);
/// Pauses are warned about at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// How loudly to log an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Info,
    Debug,
}

/// A failed accept, as the server should report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Accepting pauses now: log at this level; `unwarned` pauses came since the last warning.
    Paused { level: Level, unwarned: u64 },
    /// Accepting was already paused: nothing to log.
    WhilePaused,
}

/// The end of a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Accepts to issue again (those held back since the pause started).
    pub reissue: usize,
    /// Probes issued during the pause.
    pub retries: u64,
    /// How long accepting was paused.
    pub paused_for: Duration,
    /// Log at this level (the level of the pause's start, INFO for a warned one).
    pub level: Level,
}

struct Pause {
    since: Instant,
    /// The wait before the next probe.
    delay: Duration,
    /// When the next probe is due; `None` while a probe is pending.
    retry_at: Option<Instant>,
    /// The pending probe's operation id.
    probe: Option<u64>,
    retries: u64,
    warned: bool,
}

/// The accept side of the server: how many accepts are held back, and the pause, if any.
#[derive(Default)]
pub struct Accepting {
    /// Accepts not re-issued since their failure.
    held_back: usize,
    pause: Option<Pause>,
    warnings: Throttle,
}

impl Accepting {
    /// An accept with operation id `id` failed: it is held back, not re-issued.
    pub fn failed(&mut self, now: Instant, id: u64) -> Failed {
        self.held_back += 1;
        match &mut self.pause {
            Some(pause) => {
                if pause.probe == Some(id) {
                    // The probe failed: wait twice as long before the next one.
                    pause.probe = None;
                    pause.delay = (pause.delay * 2).min(MAX_DELAY);
                    pause.retry_at = Some(now + pause.delay);
                }
                Failed::WhilePaused
            }
            None => {
                let (level, unwarned) = match self.warnings.allow(now) {
                    Some(unwarned) => (Level::Warn, unwarned),
                    None => (Level::Debug, 0),
                };
                self.pause = Some(Pause {
                    since: now,
                    delay: FIRST_DELAY,
                    retry_at: Some(now + FIRST_DELAY),
                    probe: None,
                    retries: 0,
                    warned: level == Level::Warn,
                });
                Failed::Paused { level, unwarned }
            }
        }
    }

    /// An accept succeeded: once a probe was issued, a pause ends, and the accepts held back
    /// are to be issued again. Before the first probe a success proves nothing: with several
    /// workers, an accept that got a descriptor just before the failure may be handled after it.
    pub fn succeeded(&mut self, now: Instant) -> Option<Resumed> {
        if self.pause.as_ref()?.retries == 0 {
            return None;
        }
        let pause = self.pause.take()?;
        Some(Resumed {
            reissue: std::mem::take(&mut self.held_back),
            retries: pause.retries,
            paused_for: now.saturating_duration_since(pause.since),
            level: if pause.warned {
                Level::Info
            } else {
                Level::Debug
            },
        })
    }

    /// True when a probe is due at `now`: the caller issues one accept and reports its id
    /// with [`probing`](Accepting::probing), holding the lock on `self` throughout (so the
    /// probe's completion cannot be seen before its id is known).
    pub fn probe_due(&mut self, now: Instant) -> bool {
        let Some(pause) = &mut self.pause else {
            return false;
        };
        if pause.retry_at.is_none_or(|at| at > now) || self.held_back == 0 {
            return false;
        }
        pause.retry_at = None;
        pause.retries += 1;
        self.held_back -= 1;
        true
    }

    /// The probe was issued with operation id `id` (`None`: it could not be issued, and the
    /// next one is due after the usual wait).
    pub fn probing(&mut self, now: Instant, id: Option<u64>) {
        let Some(pause) = &mut self.pause else { return };
        match id {
            Some(id) => pause.probe = Some(id),
            None => {
                self.held_back += 1;
                pause.delay = (pause.delay * 2).min(MAX_DELAY);
                pause.retry_at = Some(now + pause.delay);
            }
        }
    }

    /// How long until the next probe is due (zero when overdue), if one is scheduled: the
    /// longest a worker may wait for completions.
    pub fn next_probe(&self, now: Instant) -> Option<Duration> {
        let at = self.pause.as_ref()?.retry_at?;
        Some(at.saturating_duration_since(now))
    }
}

/// Lets a warning through at most once per [`WARN_EVERY`], counting the ones held back.
#[derive(Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(n)` when a warning may be logged now, `n` being how many were held back since the
    /// last one; `None` (and one more held back) otherwise.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Every pending accept fails at once: one warning, nothing re-issued until the first
    /// probe is due 10 ms later.
    #[test]
    fn failures_pause_accepting_with_one_warning_and_no_immediate_retry() {
        let t0 = Instant::now();
        let mut a = Accepting::default();
        assert_eq!(
            a.failed(t0, 1),
            Failed::Paused {
                level: Level::Warn,
                unwarned: 0
            }
        );
        for id in 2..=16 {
            assert_eq!(a.failed(t0, id), Failed::WhilePaused);
        }
        assert_eq!(a.next_probe(t0), Some(FIRST_DELAY));
        assert!(!a.probe_due(t0 + 9 * MS), "not before the delay");
        assert!(a.probe_due(t0 + 10 * MS));
        assert!(!a.probe_due(t0 + 10 * MS), "one probe at a time");
        a.probing(t0 + 10 * MS, Some(100));
        assert_eq!(a.next_probe(t0 + 10 * MS), None, "probe pending");
    }

    /// Failed probes double the wait up to 1 s; an older accept failing meanwhile does not
    /// move the schedule. When a probe succeeds, every accept held back is issued again: the
    /// server is back to its 16 pending accepts.
    #[test]
    fn failed_probes_back_off_doubling_to_one_second() {
        let mut now = Instant::now();
        let mut a = Accepting::default();
        for id in 1..=15 {
            a.failed(now, id); // accept 16 is still pending
        }
        let mut waits = Vec::new();
        for probe in 100..110 {
            let wait = a.next_probe(now).unwrap();
            waits.push(wait.as_millis());
            now += wait;
            assert!(a.probe_due(now));
            a.probing(now, Some(probe));
            if probe == 103 {
                assert_eq!(a.failed(now, 16), Failed::WhilePaused, "not the probe");
                assert_eq!(a.next_probe(now), None, "still waiting for the probe");
            }
            if probe < 109 {
                assert_eq!(a.failed(now + MS, probe), Failed::WhilePaused);
                now += MS;
            }
        }
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "doubling from 10 ms, capped at 1 s"
        );
        let resumed = a.succeeded(now).unwrap(); // probe 109
        assert_eq!(resumed.retries, 10);
        assert_eq!(resumed.level, Level::Info);
        assert_eq!(resumed.reissue + 1, 16, "with the probe's own replacement");
        assert_eq!(a.succeeded(now), None, "nothing to resume");
    }

    /// A success handled after the failure but before any probe (an accept that got its
    /// descriptor first, handled late by another worker) does not end the pause.
    #[test]
    fn only_a_success_after_a_probe_ends_the_pause() {
        let t0 = Instant::now();
        let mut a = Accepting::default();
        a.failed(t0, 1);
        assert_eq!(a.succeeded(t0), None);
        assert_eq!(a.next_probe(t0), Some(FIRST_DELAY), "still paused");
        assert!(a.probe_due(t0 + FIRST_DELAY));
        a.probing(t0 + FIRST_DELAY, Some(2));
        // An older accept succeeding while the probe is pending: descriptors are free again.
        let resumed = a.succeeded(t0 + FIRST_DELAY + MS).unwrap();
        assert_eq!((resumed.retries, resumed.reissue), (1, 0));
        assert_eq!(resumed.paused_for, FIRST_DELAY + MS);
    }

    /// Pause and resume at `now`, with one probe between.
    fn pause_and_resume(a: &mut Accepting, now: Instant, id: u64) -> (Failed, Resumed) {
        let failed = a.failed(now, id);
        assert!(a.probe_due(now + FIRST_DELAY));
        a.probing(now + FIRST_DELAY, Some(id + 1000));
        (failed, a.succeeded(now + FIRST_DELAY).unwrap())
    }

    /// A pause soon after a warned one is logged at DEBUG; after a minute, a warning again,
    /// with the count of unwarned pauses.
    #[test]
    fn warnings_are_throttled_to_one_a_minute() {
        let t0 = Instant::now();
        let mut a = Accepting::default();
        let (failed, resumed) = pause_and_resume(&mut a, t0, 1);
        assert_eq!(
            failed,
            Failed::Paused {
                level: Level::Warn,
                unwarned: 0
            }
        );
        assert_eq!(resumed.level, Level::Info);
        let (failed, resumed) = pause_and_resume(&mut a, t0 + 20 * MS, 2);
        assert_eq!(
            failed,
            Failed::Paused {
                level: Level::Debug,
                unwarned: 0
            }
        );
        assert_eq!(resumed.level, Level::Debug);
        assert_eq!(
            a.failed(t0 + WARN_EVERY, 3),
            Failed::Paused {
                level: Level::Warn,
                unwarned: 1
            }
        );
    }

    /// A probe that cannot be issued (the listener is gone) is held back and retried later.
    #[test]
    fn a_probe_not_issued_is_retried_later() {
        let t0 = Instant::now();
        let mut a = Accepting::default();
        a.failed(t0, 1);
        assert!(a.probe_due(t0 + FIRST_DELAY));
        a.probing(t0 + FIRST_DELAY, None);
        assert_eq!(a.next_probe(t0 + FIRST_DELAY), Some(2 * FIRST_DELAY));
        assert!(a.probe_due(t0 + 3 * FIRST_DELAY));
        a.probing(t0 + 3 * FIRST_DELAY, Some(7));
        assert_eq!(a.succeeded(t0 + 3 * FIRST_DELAY).unwrap().reissue, 0);
    }
}
