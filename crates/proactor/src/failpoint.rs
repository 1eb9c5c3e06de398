//! Named failpoints at the places where an operation record changes hands, compiled in only
//! with the test-only `failpoints` feature (the `fail` crate): a test configures a point to
//! pause (`fail::cfg_callback`, `fail::cfg("name", "pause")`) until another thread has done the
//! damaging thing (dropped the handle, cancelled, opened a connection that takes the same
//! descriptor number). Without the feature a point compiles to nothing.
//!
//! Every point's name starts with the backend (`uring::`, `epoll::`, `iocp::`) and names the
//! window it opens; the list is in `ARCHITECTURE.md` ("Failpoints").

/// Marks a window (use as `crate::failpoint::failpoint!("uring::resubmit")`).
///
/// Marks a window where another thread's cancel, close or drop may land.
#[allow(unused_macros)]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        ::fail::fail_point!($name);
    };
    // With a `return` action configured, returns `$ret(argument)` from the enclosing function:
    // how a test makes an OS call fail that cannot be made to fail for real.
    ($name:literal, $ret:expr) => {
        #[cfg(feature = "failpoints")]
        ::fail::fail_point!($name, $ret);
    };
}

#[allow(unused_imports)]
pub(crate) use failpoint;
