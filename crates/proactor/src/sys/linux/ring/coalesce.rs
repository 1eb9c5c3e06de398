//! Wait coalescing: how long a wait of the ring may hold completions back to hand out more at
//! once, chosen by measuring what it saves.
//!
//! A wait that asks the kernel for [`BATCH`] completions with a minimum wait
//! (`io_uring_getevents_arg::min_wait_usec`, `IORING_FEAT_MIN_TIMEOUT`, Linux 6.12) sleeps until
//! that many are there or the minimum wait has passed, then returns with what came (the
//! engine then waits plainly if nothing did).
//! Under a load whose peers keep sending while they wait for replies (pipelined requests),
//! each wake-up then finds more completions and each receive more bytes: fewer wake-ups,
//! receives, sends and segments per message. Under a load that waits for every reply (one
//! request at a time), holding a completion back only delays the next request, and the timer
//! costs a wake-up of its own. Which one a program meets is not known in advance, and it
//! changes, so the delay is chosen by measurement, as a network card's adaptive interrupt
//! moderation chooses its own:
//!
//! - The delay is one of [`LEVELS`] (fractions of the program's maximum, the first 0: no
//!   coalescing). Time is cut into epochs of [`EPOCH`]; each epoch's cost is this thread's
//!   CPU time per byte its completions moved (received or sent: per completion would mislead,
//!   as a coalesced receive or send carries more messages), the first epoch after a change
//!   of level left out (the load settles into the new rhythm).
//! - From time to time the controller tries the next level up or down (a settling epoch, then
//!   [`TRY_EPOCHS`] measured), against moving averages of the old level's epochs: a longer
//!   delay is kept only if the cost fell by [`GAIN_UP`] and the bytes per second did not fall
//!   by [`RATE_SLACK`] (clients that wait for each reply make a longer delay cheaper per byte,
//!   the thread sleeping more, while they get less through); a shorter one unless the cost
//!   rose by [`SLACK_DOWN`] without the bytes per second rising by [`RATE_SLACK`] (with costs
//!   level, the shorter delay wins: no delay for nothing); a step
//!   that did not pay is tried again only after twice as many epochs as the last time (up to
//!   [`MAX_BACKOFF`]).
//! - Guard: an epoch at a level above 0 whose waits took fewer than [`MIN_PER_WAIT`]
//!   completions each, or that ended with fewer than [`MIN_SAMPLE`] completions (a light
//!   load), goes back to level 0 at once: coalescing is kept only while every wait brings
//!   several completions (checked from the [`EARLY_GUARD`]th wait of an epoch on), so one
//!   connection's request-at-a-time load pays the delay on a few waits, once per back-off.
//!   Several such connections bring several completions per wait: there the rate rule is what
//!   refuses a delay, after a try (one settling epoch and two measured: 12 ms at half the
//!   maximum delay), once per back-off. Clients that pace themselves (a fixed request rate)
//!   keep their rate whatever the delay: a cheaper delay is kept, and adds up to the delay to
//!   each reply.

use std::time::{Duration, Instant};

/// Completions a coalescing wait asks for before its minimum wait has passed.
pub(super) const BATCH: u32 = 64;
/// The delays tried, in eighths of the maximum. Few and far apart: on this project's VM a
/// minimum wait of a quarter of 200 µs cost more than none at all where 200 µs saved 40% (the
/// timer fires before the batch is there, and a wake-up by timer costs more than it saves), so
/// a climb in small steps would stop at the first.
const LEVELS: [u32; 3] = [0, 4, 8];
/// The length of an epoch.
const EPOCH: Duration = Duration::from_millis(4);
/// A step up (a longer delay) is kept when it lowers the CPU time per byte by this share...
const GAIN_UP: f64 = 0.10;
/// ... a step down when it raises it by less than this one: with costs level, the shorter
/// delay wins.
const SLACK_DOWN: f64 = 0.03;
/// A step up is given up if the bytes moved per second fall by this share; a step down is
/// kept if they rise by it.
const RATE_SLACK: f64 = 0.05;
/// Epochs a try is measured over (after its settling epoch).
const TRY_EPOCHS: u32 = 2;
/// Epochs at a level before the first try of each neighbour.
const FIRST_TRY: u32 = 4;
/// The longest wait, in epochs, between two tries of a step that did not pay.
const MAX_BACKOFF: u32 = 256;
/// Below this many completions an epoch says nothing about the cost (a light load).
const MIN_SAMPLE: u32 = 64;
/// Completions per wait below which a coalescing level is left at once...
const MIN_PER_WAIT: u32 = 4;
/// ... as soon as this many waits of an epoch say so.
const EARLY_GUARD: u32 = 8;
/// Waits between two readings of the clock.
const CLOCK_EVERY: u32 = 8;

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
pub(super) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec`, `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What an epoch (or a try's epochs) measured.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// CPU ns per byte.
    cost: f64,
    /// Bytes per µs.
    rate: f64,
}

impl Figures {
    fn of(spent: Duration, bytes: u64, wall: Duration) -> Figures {
        Figures {
            cost: spent.as_nanos() as f64 / bytes as f64,
            rate: bytes as f64 / (wall.as_nanos() as f64 / 1000.0).max(1.0),
        }
    }
}

/// The controller. Pure logic: the caller reads the clocks and counts.
#[derive(Debug)]
pub(super) struct Coalesce {
    /// The longest delay, in µs; 0: off.
    max_us: u32,
    /// The delay is held at `max_us` (tests): no measuring.
    fixed: bool,
    level: usize,
    /// The epoch under way: when it started, the thread's CPU time then, the completions,
    /// the bytes they moved and the waits since.
    started: Instant,
    cpu_at_start: Duration,
    done: u32,
    bytes: u64,
    waits: u32,
    /// The epoch under way follows a change of level: it is not measured (the load takes
    /// some time to settle into the new rhythm: the first epoch at a new delay moves
    /// fewer bytes than the next ones).
    settling: bool,
    /// At the settled level, moving averages of its epochs (a quarter of each new one):
    /// cost (CPU ns per byte) and rate (bytes per µs).
    base: Option<Figures>,
    /// A step being tried: the level to go back to, and what its measured epochs so far
    /// spent, moved, lasted, and how many they were.
    trying_from: Option<usize>,
    tried: (Duration, u64, Duration, u32),
    /// Per direction (down, up): epochs until the next try, and the back-off after a miss.
    wait_for: [u32; 2],
    backoff: [u32; 2],
}

impl Coalesce {
    pub(super) fn new(now: Instant, cpu: Duration) -> Coalesce {
        Coalesce {
            max_us: 0,
            fixed: false,
            level: 0,
            started: now,
            cpu_at_start: cpu,
            done: 0,
            bytes: 0,
            waits: 0,
            settling: false,
            base: None,
            trying_from: None,
            tried: (Duration::ZERO, 0, Duration::ZERO, 0),
            wait_for: [FIRST_TRY; 2],
            backoff: [FIRST_TRY; 2],
        }
    }

    /// Sets the longest delay (`None` or zero: off; rounded up to whole µs) and starts over
    /// from no coalescing.
    pub(super) fn set_max(&mut self, max: Option<Duration>, now: Instant, cpu: Duration) {
        let us = max.map_or(0, |d| {
            d.as_nanos().div_ceil(1000).min(u128::from(u32::MAX)) as u32
        });
        *self = Coalesce::new(now, cpu);
        self.max_us = us;
    }

    /// Holds the delay at `delay` (zero: off), measuring nothing: for tests of the waits.
    pub(super) fn fix(&mut self, delay: Duration, now: Instant) {
        self.set_max(Some(delay), now, Duration::ZERO);
        self.level = LEVELS.len() - 1;
        self.fixed = true;
    }

    /// Whether coalescing is on (some maximum delay is set).
    pub(super) fn on(&self) -> bool {
        self.max_us > 0
    }

    /// The minimum wait of the next wait, in µs (0: a plain wait for one completion).
    pub(super) fn delay_us(&self) -> u32 {
        (u64::from(self.max_us) * u64::from(LEVELS[self.level]) / 8) as u32
    }

    /// Counts completions reaped (after a wait or not).
    #[inline]
    pub(super) fn reaped(&mut self, n: u32) {
        self.done = self.done.saturating_add(n);
    }

    /// Counts bytes a completion moved (received or sent).
    #[inline]
    pub(super) fn moved(&mut self, n: u32) {
        self.bytes += u64::from(n);
    }

    /// Counts one wait; ends the epoch when it is due, or at once when a delay is in use and
    /// the waits so far bring few completions (a request-at-a-time load: each of its waits is
    /// held for the whole delay). The clock is read every [`CLOCK_EVERY`] waits, this thread's
    /// CPU time (`cpu()`) only at an epoch's end.
    pub(super) fn waited(&mut self, now: impl FnOnce() -> Instant, cpu: impl FnOnce() -> Duration) {
        if !self.on() || self.fixed {
            return;
        }
        self.waits += 1;
        let few =
            self.level > 0 && self.waits >= EARLY_GUARD && self.done < self.waits * MIN_PER_WAIT;
        if !few && self.waits % CLOCK_EVERY != 0 {
            return;
        }
        let now = now();
        if !few && now.duration_since(self.started) < EPOCH {
            return;
        }
        let cpu = cpu();
        let spent = cpu.saturating_sub(self.cpu_at_start);
        let wall = now.duration_since(self.started);
        let (done, bytes, waits) = (self.done, self.bytes, self.waits.max(1));
        self.started = now;
        self.cpu_at_start = cpu;
        self.done = 0;
        self.bytes = 0;
        self.waits = 0;
        let usual = EPOCH * 4 + Duration::from_micros(u64::from(self.delay_us())) * waits;
        if wall > usual && !few {
            // The thread did not wait for a long while (busy, or not calling): this epoch is
            // not one of the others' kind; measure afresh from here, and a try under way ends
            // unjudged, back where it started.
            if let Some(from) = self.trying_from.take() {
                self.level = from;
                self.settling = true;
                self.base = None;
            }
            return;
        }
        self.end_epoch(spent, done, bytes, wall, waits);
    }

    fn end_epoch(&mut self, spent: Duration, done: u32, bytes: u64, wall: Duration, waits: u32) {
        let few = self.level > 0 && done / waits < MIN_PER_WAIT;
        if done < MIN_SAMPLE || bytes == 0 || few {
            // A light load: no coalescing (it saves nothing there). Waits that each bring
            // little (a request-at-a-time load): no coalescing either, and the step up is tried
            // again only after a longer back-off.
            // A try cut short so is a try that did not pay (its own slowing of the clients
            // may be what made the epoch light).
            if self.level > 0 {
                if few || self.trying_from.is_some() {
                    self.missed(1);
                }
                self.level = 0;
                self.settling = true;
            }
            self.trying_from = None;
            self.base = None;
            return;
        }
        if std::mem::take(&mut self.settling) {
            return;
        }
        if let Some(from) = self.trying_from {
            let t = &mut self.tried;
            *t = (t.0 + spent, t.1 + bytes, t.2 + wall, t.3 + 1);
            if t.3 < TRY_EPOCHS {
                return;
            }
            let now = Figures::of(t.0, t.1, t.2);
            self.trying_from = None;
            let up = self.level > from;
            let kept = self.base.is_some_and(|base| match up {
                // Cheaper per byte, and not by moving fewer bytes: with clients that wait
                // for each reply, a longer delay lowers the CPU per byte by sleeping more
                // while it cuts what they get through.
                true => {
                    now.cost < base.cost * (1.0 - GAIN_UP)
                        && now.rate > base.rate * (1.0 - RATE_SLACK)
                }
                false => {
                    now.cost < base.cost * (1.0 + SLACK_DOWN)
                        || now.rate > base.rate * (1.0 + RATE_SLACK)
                }
            });
            let dir = usize::from(up);
            if kept {
                // The same direction is tried again soon, the other later.
                self.backoff[dir] = FIRST_TRY;
                self.wait_for[dir] = 1;
                self.wait_for[1 - dir] = FIRST_TRY;
                self.base = Some(now);
            } else {
                self.level = from;
                self.settling = true;
                self.base = None;
                self.missed(dir);
            }
            return;
        }
        let now = Figures::of(spent, bytes, wall);
        self.base = Some(self.base.map_or(now, |b| Figures {
            cost: b.cost + (now.cost - b.cost) / 4.0,
            rate: b.rate + (now.rate - b.rate) / 4.0,
        }));
        for dir in [1, 0] {
            self.wait_for[dir] = self.wait_for[dir].saturating_sub(1);
        }
        let up = self.level + 1 < LEVELS.len() && self.wait_for[1] == 0;
        let down = self.level > 0 && self.wait_for[0] == 0;
        if up || down {
            self.trying_from = Some(self.level);
            self.tried = (Duration::ZERO, 0, Duration::ZERO, 0);
            self.settling = true;
            // Down first when both are due: the shorter delay, when it costs no more.
            if down {
                self.level -= 1;
            } else {
                self.level += 1;
            }
        }
    }

    /// A step in direction `dir` (0 down, 1 up) did not pay: wait twice as long before the
    /// next try.
    fn missed(&mut self, dir: usize) {
        self.backoff[dir] = (self.backoff[dir] * 2).min(MAX_BACKOFF);
        self.wait_for[dir] = self.backoff[dir];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a controller with a load whose CPU cost per completion (of 100 bytes) at each level is
    /// `cost[level]` (ns) and whose waits each reap `per_wait[level]` completions; returns
    /// the settled level after `epochs` epochs and how many epochs' worth of waits (100 each) were
    /// spent above level 0.
    fn drive(cost: [f64; 3], per_wait: [u32; 3], epochs: u32) -> (usize, u32) {
        drive_from(0, cost, per_wait, [1; 3], epochs)
    }

    /// [`drive`] from level `start`, a wait at level `l` lasting `stretch[l]` times as long.
    fn drive_from(
        start: usize,
        cost: [f64; 3],
        per_wait: [u32; 3],
        stretch: [u32; 3],
        epochs: u32,
    ) -> (usize, u32) {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        c.set_max(Some(Duration::from_micros(200)), t0, Duration::ZERO);
        c.level = start;
        let mut cpu = Duration::ZERO;
        let mut now = t0;
        let mut above = 0;
        for _ in 0..epochs {
            // One epoch: 100 waits, each reaping `per_wait` completions of 100 bytes at the
            // level of the moment.
            for _ in 0..100 {
                let level = c.level;
                above += u32::from(level > 0);
                let n = per_wait[level];
                cpu += Duration::from_nanos((cost[level] * f64::from(n)) as u64);
                now += EPOCH / 100 * stretch[level];
                c.reaped(n);
                c.moved(n * 100);
                c.waited(|| now, || cpu);
            }
        }
        // The settled level (a try under way is not where the controller stands).
        (c.trying_from.unwrap_or(c.level), above / 100)
    }

    #[test]
    fn climbs_to_the_level_that_costs_least() {
        let (level, _) = drive([1000.0, 800.0, 600.0], [8; 3], 200);
        assert_eq!(level, 2);
        let (level, _) = drive([1000.0, 800.0, 990.0], [8; 3], 200);
        assert_eq!(level, 1);
        // From the top, down again when the load changes is the next test's business; here,
        // a level that costs more than the one below is left.
        let (level, _) = drive([1000.0, 1200.0, 600.0], [8; 3], 200);
        assert_eq!(
            level, 0,
            "a step that does not pay is not taken, even with a better one beyond"
        );
    }

    #[test]
    fn a_delay_that_saves_nothing_is_given_up() {
        // The load changed: the longest delay costs what the middle one does, which costs
        // what none does. Level costs lead down, to no delay.
        let (level, _) = drive_from(2, [1000.0, 1000.0, 1000.0], [8; 3], [1; 3], 100);
        assert_eq!(level, 0);
        // A 12% saving is kept, a further step that saves nothing is not.
        let (level, _) = drive_from(2, [1000.0, 880.0, 880.0], [8; 3], [1; 3], 100);
        assert_eq!(level, 1);
    }

    #[test]
    fn a_delay_that_slows_the_clients_is_not_kept_however_cheap() {
        // Clients that wait for each reply: the longer the delay, the less CPU per byte (the
        // thread sleeps) and the fewer bytes per second.
        let (level, _) = drive_from(0, [1000.0, 700.0, 500.0], [8; 3], [1, 3, 6], 1000);
        assert_eq!(level, 0);
        // The same saving with the clients going as fast: kept.
        let (level, _) = drive_from(0, [1000.0, 700.0, 500.0], [8; 3], [1; 3], 1000);
        assert_eq!(level, 2);
        // From the top, with the rate better lower down: down even at a higher CPU per byte.
        let (level, _) = drive_from(2, [1100.0, 1050.0, 1000.0], [8; 3], [1, 2, 4], 1000);
        assert_eq!(level, 0);
    }

    #[test]
    fn stays_off_when_coalescing_does_not_pay() {
        let (level, above) = drive([1000.0, 1020.0, 2000.0], [8; 3], 1000);
        assert_eq!(level, 0);
        // Tries back off: few epochs in a thousand are spent trying.
        assert!(above < 30, "{above} epochs above 0");
    }

    #[test]
    fn leaves_coalescing_when_waits_bring_little() {
        // Cheaper on paper, but each coalescing wait brings one completion (a request at a
        // time): the guard keeps level 0.
        let (level, above) = drive([1000.0, 500.0, 200.0], [8, 1, 1], 1000);
        assert_eq!(level, 0);
        assert!(above < 30, "{above} epochs above 0");
    }

    #[test]
    fn a_light_epoch_turns_it_off_without_a_longer_back_off() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        c.set_max(Some(Duration::from_micros(100)), t0, Duration::ZERO);
        c.level = 2;
        let backoff = c.backoff;
        // Seven completions per wait (not few), 56 in a whole epoch (light).
        for i in 1..=CLOCK_EVERY {
            c.reaped(7);
            c.moved(700);
            let at = if i == CLOCK_EVERY { t0 + EPOCH } else { t0 };
            c.waited(|| at, || Duration::from_micros(50));
        }
        assert_eq!(c.delay_us(), 0);
        assert_eq!(c.backoff, backoff, "a light load is no failed try");
    }

    #[test]
    fn a_light_load_turns_it_off() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        c.set_max(Some(Duration::from_micros(100)), t0, Duration::ZERO);
        c.level = 2;
        // A few completions over a whole epoch's time.
        c.reaped(5);
        c.moved(500);
        for _ in 0..CLOCK_EVERY {
            c.waited(|| t0 + EPOCH, || Duration::from_micros(50));
        }
        assert_eq!(c.delay_us(), 0);
    }

    #[test]
    fn waits_that_bring_one_completion_end_the_delay_within_a_few_waits() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        c.set_max(Some(Duration::from_micros(200)), t0, Duration::ZERO);
        c.level = 2;
        for _ in 0..EARLY_GUARD {
            c.reaped(1);
            c.moved(64);
            // No time passes: the guard does not wait for the epoch's end.
            c.waited(|| t0, || Duration::ZERO);
        }
        assert_eq!(c.delay_us(), 0);
    }

    #[test]
    fn a_fixed_delay_stays() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        c.fix(Duration::from_micros(300), t0);
        c.reaped(1);
        c.waited(|| t0 + EPOCH * 2, || Duration::from_secs(1));
        assert_eq!(c.delay_us(), 300);
    }

    #[test]
    fn off_by_default_and_when_set_to_zero() {
        let t0 = Instant::now();
        let mut c = Coalesce::new(t0, Duration::ZERO);
        assert!(!c.on());
        assert_eq!(c.delay_us(), 0);
        c.set_max(Some(Duration::ZERO), t0, Duration::ZERO);
        assert!(!c.on());
        c.set_max(Some(Duration::from_micros(200)), t0, Duration::ZERO);
        assert!(c.on());
        assert_eq!(c.delay_us(), 0, "starts from no coalescing");
        c.level = 2;
        assert_eq!(c.delay_us(), 200);
        c.level = 1;
        assert_eq!(c.delay_us(), 100);
    }
}
