//! The one OS boundary.
//!
//! Every backend provides the same items, and portable code names nothing else:
//!
//! - `Port`: the completion port. `Port::new(concurrency)`, `associate`, `post`, the operation
//!   submissions, `cancel`, `cancel_all`, `get_completion`, `get_completions`. Submissions never
//!   fail: every outcome, including a misuse the port detects, arrives as a completion.
//! - `Target`: what an operation needs to know about a handle (raw identity, context, port,
//!   per-handle modes); `Target::close` cancels everything in flight on it, before the owner
//!   closes the OS object.
//! - `RawIo`: an OS object's raw identity, given by the sealed `Associate` implementations.
//!
//! The contract every backend meets: an operation's memory is owned by the backend from
//! submission until its completion is dequeued, and is never freed while the kernel may still
//! use it; dropping a `Port` cancels what is in flight, reclaims what completes within a bounded
//! wait, and leaks (never frees) what does not.

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(any(windows, target_os = "linux")))]
mod unsupported;
#[cfg(not(any(windows, target_os = "linux")))]
pub(crate) use unsupported::*;
