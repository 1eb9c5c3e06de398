//! The stream-integrity oracle and the seeded schedule of `tests/integrity.rs`: a PRNG, seeds
//! that replay, a byte pattern that names its connection and offset, a failure log that carries
//! the seed, and a pool of worker threads dequeuing one port.

use std::{
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use proactor::{Completion, Iocp, OpKind};

/// A small seeded PRNG (SplitMix64): the same seed gives the same schedule of choices.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            lo
        } else {
            lo + (self.next_u64() % (hi - lo) as u64) as usize
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len())]
    }

    /// A derived generator, for another thread's share of the schedule.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// The seeds to run: `PROACTOR_SEED` alone when it is set (a replay), else `count` seeds
/// derived from the time (at most `PROACTOR_SEEDS` when that is a number: CI's repeated and
/// sanitizer passes).
pub fn seeds(count: usize) -> Vec<u64> {
    let count = std::env::var("PROACTOR_SEEDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .map_or(count, |most: usize| count.min(most.max(1)));
    match std::env::var("PROACTOR_SEED") {
        Ok(s) => vec![s.trim().parse().expect("PROACTOR_SEED must be a u64")],
        Err(_) => {
            let base = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            let mut rng = Rng::new(base);
            (0..count).map(|_| rng.next_u64() >> 1).collect()
        }
    }
}

/// Failures found by any thread of one seeded run, reported together with the seed.
#[derive(Clone)]
pub struct Fails {
    pub seed: u64,
    pub test: &'static str,
    /// The test binary, for the replay command.
    pub binary: &'static str,
    list: Arc<Mutex<Vec<String>>>,
}

impl Fails {
    pub fn new(test: &'static str, seed: u64) -> Fails {
        Fails {
            seed,
            test,
            binary: "integrity",
            list: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The same, replayed with the test binary `binary` (another suite over this oracle).
    pub fn in_binary(mut self, binary: &'static str) -> Fails {
        self.binary = binary;
        self
    }

    /// Records one violation of the contract (kept going: one run can show several).
    pub fn fail(&self, msg: String) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.len() < 1000 {
            list.push(msg);
        }
    }

    pub fn any(&self) -> bool {
        !self
            .list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Panics with every recorded failure, the backend and how to replay the seed.
    pub fn check(&self, backend: &str) {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return;
        }
        let shown: Vec<&str> = list.iter().take(12).map(String::as_str).collect();
        panic!(
            "{} on {backend}, seed {}: {} failure(s) (replay: PROACTOR_SEED={} cargo test -p \
             proactor --test {} {}):\n  - {}",
            self.test,
            self.seed,
            list.len(),
            self.seed,
            self.binary,
            self.test,
            shown.join("\n  - ")
        );
    }
}

/// The value of the 8-byte word that holds stream position `pos` of connection `conn`.
pub fn word(conn: u64, pos: u64) -> u64 {
    (conn << 40) | (pos & !7)
}

/// The byte at stream position `pos` of connection `conn` (the little-endian bytes of its word).
pub fn byte_at(conn: u64, pos: u64) -> u8 {
    (word(conn, pos) >> ((pos & 7) * 8)) as u8
}

/// The bytes of connection `conn` from stream position `start`, `len` of them.
pub fn pattern(conn: u64, start: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut p = start;
    while v.len() < len && p & 7 != 0 {
        v.push(byte_at(conn, p));
        p += 1;
    }
    while len - v.len() >= 8 {
        v.extend_from_slice(&word(conn, p).to_le_bytes());
        p += 8;
    }
    while v.len() < len {
        v.push(byte_at(conn, p));
        p += 1;
    }
    v
}

/// Where `data` first differs from connection `conn`'s bytes from `start`, if anywhere.
pub fn mismatch(conn: u64, start: u64, data: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < data.len() {
        let n = (data.len() - at).min(1 << 16);
        let want = pattern(conn, start + at as u64, n);
        if let Some(i) = (0..n).find(|&i| data[at + i] != want[i]) {
            return Some(at + i);
        }
        at += n;
    }
    None
}

/// What the received bytes at `at` look like (connection `conn`'s stream position `pos` was
/// expected there): the connection and offset they were sent as, found by trying the 8
/// alignments for a word that decodes as `connection << 40 | offset` (this connection's first).
pub fn describe(data: &[u8], at: usize, pos: u64, conn: u64) -> String {
    let expected = format!("stream offset {pos} of the sender expected");
    let words: Vec<(u64, u64)> = (0..8usize)
        .filter_map(|back| {
            let s = at.checked_sub(back).filter(|s| s + 8 <= data.len())?;
            let w = u64::from_le_bytes(data[s..s + 8].try_into().unwrap());
            let (c, off) = (w >> 40, w & ((1 << 40) - 1));
            // Connection ids are small and streams shorter than 256 MiB.
            (c < 1024 && off % 8 == 0 && off < 1 << 28).then_some((c, off + back as u64))
        })
        .collect();
    match words.iter().find(|w| w.0 == conn).or(words.first()) {
        Some((c, off)) => {
            format!("{expected}, got the bytes sent as connection {c}'s offset {off}")
        }
        None => format!("{expected}, got byte {:#04x}", data[at]),
    }
}

/// Checks that `got` is exactly the concatenation of connection `conn`'s segments
/// `(start, len)` (what each completion said it moved), and says where it is not.
pub fn check_stream(conn: u64, segments: &[(u64, usize)], got: &[u8]) -> Result<(), String> {
    let want: usize = segments.iter().map(|s| s.1).sum();
    let mut at = 0;
    for &(start, len) in segments {
        let n = len.min(got.len().saturating_sub(at));
        if let Some(i) = mismatch(conn, start, &got[at..at + n]) {
            return Err(format!(
                "connection {conn}: the peer's byte {} differs from what was sent (stream \
                 offset {} of a send from {start}): {}; the peer got {} bytes, the completions \
                 report {want}",
                at + i,
                start + i as u64,
                describe(got, at + i, start + i as u64, conn),
                got.len()
            ));
        }
        at += n;
    }
    if got.len() != want {
        return Err(format!(
            "connection {conn}: the peer got {} bytes, the completions report {want} (bytes \
             {}: {})",
            got.len(),
            if got.len() > want {
                "the peer has more than was sent"
            } else {
                "missing at the end"
            },
            if got.len() > want {
                describe(got, want, 0, conn)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// The context of the packets that stop the workers.
pub const STOP: usize = usize::MAX;

/// Threads dequeuing one port, each completion handed to `handler`.
pub struct Pool {
    threads: Vec<thread::JoinHandle<()>>,
}

impl Pool {
    pub fn start(
        port: &Arc<Iocp>,
        workers: usize,
        fails: &Fails,
        handler: Arc<dyn Fn(Completion) + Send + Sync>,
    ) -> Pool {
        let threads = (0..workers)
            .map(|_| {
                let (port, fails, handler) = (port.clone(), fails.clone(), handler.clone());
                thread::spawn(move || {
                    loop {
                        match port.get_completion(Some(Duration::from_millis(200))) {
                            Ok(c) if c.kind() == OpKind::Post && c.context() == STOP => break,
                            Ok(c) => handler(c),
                            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(e) => {
                                fails.fail(format!("get_completion failed: {e}"));
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Pool { threads }
    }

    /// Stops and joins the workers.
    pub fn stop(self, port: &Iocp, fails: &Fails) {
        for _ in &self.threads {
            port.post(STOP, 0).expect("post a stop packet");
        }
        for t in self.threads {
            if t.join().is_err() {
                fails.fail("a worker panicked".into());
            }
        }
    }
}

/// Polls `done` until it holds or `deadline` passes; whether it held.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// How many descriptors this process has open (Linux), to show leaks.
pub fn open_fds() -> Option<usize> {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
    } else {
        None
    }
}

/// A FNV-1a checksum, for datagrams.
pub fn fnv(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for &b in data {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// A peer that reads to the end of the stream in reads of random sizes, sometimes pausing a
/// millisecond (a slow, bursty reader); what it got.
pub fn paced_reader(
    mut peer: std::net::TcpStream,
    mut rng: Rng,
) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::Read;
    peer.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let want = rng.range(1, buf.len() + 1);
            let n = peer.read(&mut buf[..want]).expect("the peer's read");
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
            if rng.chance(3) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    })
}
