//! Building the ring (the best setup flags the kernel takes) and entering it through its
//! registered descriptor.

use std::{io, os::fd::AsRawFd, time::Duration};

use io_uring::IoUring;

use super::coalesce::BATCH;
use crate::sys::RING_SETUPS;

/// Submission queue size.
const ENTRIES: u32 = 4096;

const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_EXT_ARG: u32 = 8;
const IORING_ENTER_REGISTERED_RING: u32 = 16;
const IORING_REGISTER_RING_FDS: u32 = 20;
const IORING_UNREGISTER_RING_FDS: u32 = 21;

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    sec: i64,
    nsec: i64,
}

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Builds a ring with `SINGLE_ISSUER | DEFER_TASKRUN`, else `COOP_TASKRUN`, else neither
/// (each with `SUBMIT_ALL`), starting at `from` (an index in [`RING_SETUPS`]), and says
/// which.
pub(super) fn build(from: usize) -> io::Result<(IoUring, &'static str)> {
    let attempt = |level: usize| {
        let mut b = IoUring::builder();
        b.setup_clamp().setup_submit_all().setup_cqsize(ENTRIES * 4);
        match level {
            0 => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            1 => {
                b.setup_coop_taskrun();
            }
            _ => {}
        }
        b.build(ENTRIES)
    };
    let mut last = None;
    for (level, name) in RING_SETUPS.iter().enumerate().skip(from) {
        match attempt(level) {
            Ok(ring) => return Ok((ring, name)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

/// `io_uring_register(fd, opcode, up, 1)`: one `io_uring_rsrc_update`, which the kernel reads
/// and, registering, writes the index it chose into.
fn register_one(fd: i32, opcode: u32, up: &mut RsrcUpdate) -> libc::c_long {
    // SAFETY: io_uring_register reads and writes one `io_uring_rsrc_update`, `up`, a live
    // exclusive reference for the call's duration.
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            opcode,
            std::ptr::from_mut(up).cast::<libc::c_void>(),
            1,
        )
    }
}

/// How the ring is entered: by its registered index when the kernel took it, else its fd.
pub(super) struct Enter {
    fd: i32,
    flags: u32,
}

impl Enter {
    /// Registers `ring`'s descriptor (`IORING_REGISTER_RING_FDS`) if the kernel can.
    pub(super) fn new(ring: &IoUring) -> Enter {
        let fd = ring.as_raw_fd();
        let mut up = RsrcUpdate {
            offset: u32::MAX,
            resv: 0,
            data: fd as u64,
        };
        if register_one(fd, IORING_REGISTER_RING_FDS, &mut up) == 1 {
            Enter {
                fd: up.offset as i32,
                flags: IORING_ENTER_REGISTERED_RING,
            }
        } else {
            Enter { fd, flags: 0 }
        }
    }

    /// Whether the ring's descriptor is registered.
    pub(super) fn registered(&self) -> bool {
        self.flags != 0
    }

    /// Unregisters `ring`'s descriptor (`IORING_UNREGISTER_RING_FDS`), before the ring is
    /// dropped: the registration belongs to the thread and holds the ring open past the close
    /// of its descriptor, until the thread exits (a thread that makes and drops ports would
    /// keep every ring, its buffers and the files its operations held, and from its 17th port
    /// on register none: a thread has 16 slots). Afterwards the ring is entered by descriptor.
    pub(super) fn unregister(&mut self, ring: &IoUring) {
        if !self.registered() {
            return;
        }
        let fd = ring.as_raw_fd();
        let mut up = RsrcUpdate {
            offset: self.fd as u32,
            resv: 0,
            data: 0,
        };
        if register_one(fd, IORING_UNREGISTER_RING_FDS, &mut up) != 1 {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "unregistering the ring's descriptor"
            );
        }
        *self = Enter { fd, flags: 0 };
    }

    /// Submits `to_submit` SQEs, runs completions' task work, and waits for one CQE if `wait`,
    /// at most `timeout` (`None`: no limit). Interruptions and time-outs are not errors.
    ///
    /// With `min_wait_us` > 0 (only on a kernel with `IORING_FEAT_MIN_TIMEOUT`: the callers
    /// check) the wait is a coalescing one instead: for [`BATCH`] CQEs during `min_wait_us`,
    /// then it returns, with whatever came (`ETIME` if nothing: the caller waits again, plainly).
    /// It is given no timeout: with one, the kernel would go on waiting past the minimum, a
    /// phase that some kernels (6.12 to 6.18 without "io_uring: fix min_wait wakeups for
    /// SQPOLL") end only after all [`BATCH`] CQEs when completions come without task work on
    /// this thread; the caller passes a minimum only when its own timeout is no shorter.
    pub(super) fn enter(
        &self,
        to_submit: u32,
        wait: bool,
        timeout: Option<Duration>,
        min_wait_us: u32,
    ) -> io::Result<()> {
        let coalesce = wait && min_wait_us > 0;
        let min = match (wait, coalesce) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => BATCH,
        };
        let mut flags = self.flags | IORING_ENTER_GETEVENTS;
        let ts;
        let arg;
        let (argp, argsz) = match (timeout.filter(|_| wait), coalesce) {
            (None, false) => (std::ptr::null(), 0),
            (timeout, _) => {
                ts = timeout.filter(|_| !coalesce).map(|t| KernelTimespec {
                    sec: t.as_secs().min(i64::MAX as u64) as i64,
                    nsec: i64::from(t.subsec_nanos()),
                });
                arg = GeteventsArg {
                    sigmask: 0,
                    sigmask_sz: 0,
                    min_wait_usec: if coalesce { min_wait_us } else { 0 },
                    ts: ts.as_ref().map_or(0, |t| std::ptr::from_ref(t) as u64),
                };
                flags |= IORING_ENTER_EXT_ARG;
                (
                    (&raw const arg).cast::<libc::c_void>(),
                    std::mem::size_of::<GeteventsArg>(),
                )
            }
        };
        // SAFETY: io_uring_enter reads the SQEs queued in the ring (all of whose pointers name
        // memory the engine keeps until their CQEs) and, with EXT_ARG, `arg` and `ts`, which
        // live until it returns.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                to_submit,
                min,
                flags,
                argp,
                argsz,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY) => Ok(()),
            _ => Err(e),
        }
    }
}
