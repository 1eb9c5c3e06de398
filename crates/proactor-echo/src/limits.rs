//! The descriptor limit: each connection holds one descriptor, and the usual soft limit (1,024)
//! is far below the default `--max-connections` (10,000). Unix only: Windows has no such limit
//! on sockets.

/// Descriptors the server holds besides its connections: the standard streams, the port (a ring
/// or an epoll instance, and an eventfd), the listener, and a margin.
pub const RESERVED: u64 = 16;

/// The soft limit on open descriptors before and after raising it as far as the hard limit
/// allows (an unprivileged process may raise its soft limit up to the hard one).
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit targets only
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit. Failure (macOS refuses an unlimited hard limit
        // above OPEN_MAX) leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok((before as u64, limit.rlim_cur as u64))
}

/// How many connections fit under a descriptor limit of `nofile`.
pub fn connections_fitting(nofile: u64) -> u64 {
    nofile.saturating_sub(RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit targets only
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let (_, after) = raise_nofile().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(after, limit.rlim_cur as u64);
        #[cfg(target_os = "linux")]
        assert_eq!(limit.rlim_cur, limit.rlim_max, "raised to the hard limit");
        assert_eq!(raise_nofile().unwrap(), (after, after));
        assert_eq!(connections_fitting(40), 24);
        assert_eq!(connections_fitting(5), 0);
    }
}
