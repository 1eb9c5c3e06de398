//! Safe completion-based I/O: Windows I/O completion ports with owned buffers.
//!
//! `proactor` gives Rust programs the completion-port model with no `unsafe` on the user's side.
//! An [`Iocp`] is a completion port. Handles (sockets, files, pipes) are associated with it by
//! [`Iocp::add_handle`], which returns a [`Handle`] carrying the application's context value.
//! Operations ([`Iocp::recv`], [`Iocp::send`], [`Iocp::accept`], [`Iocp::connect`],
//! [`Iocp::read_at`], ...) take ownership of their buffers and return an [`OpId`]. Every operation
//! ends as exactly one [`Completion`], dequeued by [`Iocp::get_completion`] or
//! [`Iocp::get_completions`] from any number of threads, which says which handle (its context),
//! which operation, how many bytes and which error, and hands the buffer back.
//!
//! Memory the kernel may still write is never freed early: an operation's buffer and its
//! `OVERLAPPED` belong to the kernel from submission until its completion is dequeued, and
//! dropping a [`Handle`] or the [`Iocp`] cancels what is in flight and waits (bounded) for it.
//!
//! # Example: an accept, receive, send loop
//!
//! ```no_run
//! use std::net::TcpListener;
//! use proactor::{Iocp, OpKind};
//!
//! # fn main() -> std::io::Result<()> {
//! let port = Iocp::new()?;
//! let listener = port.add_handle(TcpListener::bind("127.0.0.1:0")?, 0)?;
//! port.accept(&listener);
//! let mut connections = Vec::new();
//! loop {
//!     let mut done = port.get_completion(None)?;
//!     match done.kind() {
//!         OpKind::Accept => {
//!             // A failed accept (a client gone, descriptors exhausted) leaves the listener
//!             // usable: accept again (a real server backs off on exhaustion).
//!             if let Some(accepted) = done.take_accepted() {
//!                 let conn = port.add_handle(accepted.stream, connections.len() + 1)?;
//!                 port.recv(&conn, Vec::with_capacity(4096));
//!                 connections.push(Some(conn));
//!             }
//!             port.accept(&listener);
//!         }
//!         OpKind::Recv => match done.result() {
//!             // End of file, a reset or any other error ends this connection, not the server.
//!             Ok(0) | Err(_) => connections[done.context() - 1] = None,
//!             Ok(_) => {
//!                 if let Some(conn) = &connections[done.context() - 1] {
//!                     port.send(conn, done.take_buffer().unwrap());
//!                 }
//!             }
//!         },
//!         OpKind::Send => {
//!             let mut buf = done.take_buffer().unwrap();
//!             buf.clear();
//!             match (done.result(), &connections[done.context() - 1]) {
//!                 (Ok(_), Some(conn)) => {
//!                     port.recv(conn, buf);
//!                 }
//!                 _ => connections[done.context() - 1] = None,
//!             }
//!         }
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! # Backends
//!
//! On Windows the backend is the I/O completion port itself. On Linux it is io_uring, or an
//! epoll emulation of the same completion semantics where io_uring is unavailable (set
//! `PROACTOR_BACKEND=epoll` to force it, `PROACTOR_BACKEND=io_uring` to forbid it);
//! [`Iocp::backend`] says which runs. On other systems [`Iocp::new`] returns an error of kind
//! [`std::io::ErrorKind::Unsupported`]. `ARCHITECTURE.md` says what each backend guarantees,
//! and [`Iocp`]'s documentation what each operation is on each backend.
//!
//! Unix-domain stream sockets are first-class on Linux and on Windows 10 1803 and later:
//! [`Iocp::bind_unix`] and [`Iocp::connect_unix`] make them, and an accept hands over the
//! connection with its client's address ([`Completion::take_accepted_socket`]); see
//! `examples/unix_echo.rs`, which also tags each operation with its own user value
//! ([`Iocp::with_user`]).
//!
//! The module `proactor::windows` (overlapped operations on handles another completion port
//! owns, control codes, named pipes, `TransmitFile`, skip-on-success) exists only when building
//! for Windows, and is documented on the Windows target's pages (docs.rs builds both).
#![cfg_attr(not(any(windows, target_os = "linux")), allow(dead_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod completion;
mod error;
mod failpoint;
mod fs;
mod handle;
#[cfg(target_os = "linux")]
mod handshake;
mod iocp;
mod life;
mod local;
mod op;
mod pool;
mod submit;
mod sys;
mod table;
mod timers;
mod unix;

#[cfg(windows)]
#[cfg_attr(docsrs, doc(cfg(windows)))]
pub mod windows;

pub use completion::{Accepted, Completion};
pub use error::{is_cancelled, is_deadline, is_truncated, raw_os_error};
pub use fs::open_file;
pub use handle::{Associate, Handle};
pub use iocp::Iocp;
pub use local::{LocalCompletion, LocalHandle, LocalPort, LocalSubmit};
pub use op::{OpId, OpKind};
pub use pool::PooledBuf;
pub use submit::Submit;

/// The `socket2` crate, at the version proactor associates (`socket2::Socket` is an
/// [`Associate`] type): build sockets with it for [`Iocp::connect`] without depending on a
/// matching version yourself.
pub use socket2;

/// How many operations this process has submitted whose memory has not been reclaimed yet,
/// across every port.
///
/// Each operation allocates one record (its `OVERLAPPED`, its buffers, its bookkeeping) when it
/// is submitted and frees it when its completion is dequeued or its port reclaims it on drop.
/// This count therefore returns to zero once every port is dropped, unless a port had to leak an
/// operation that the kernel never completed (see [`Iocp`]'s drop). It exists so that tests and
/// applications can check that nothing leaks.
///
/// A [`LocalPort`] on io_uring keeps its operations in a slab of its own and adds them to this
/// count in one step at the end of each [`get_completion`](LocalPort::get_completion) or
/// [`get_completions`](LocalPort::get_completions) call and when it is dropped, rather than with
/// an atomic operation per operation: between two such calls the count lags, operations started
/// since not counted yet and operations completed since (cancelled by a handle's drop, say)
/// still counted.
///
/// ```
/// // A fresh process has submitted nothing.
/// assert_eq!(proactor::live_operations(), 0);
/// ```
pub fn live_operations() -> usize {
    op::live_operations()
}
