//! The lifecycle log format: `[2026-11-21T10:00:00.123Z] Step. Field: value`.

use std::{
    io,
    time::{SystemTime, UNIX_EPOCH},
};

/// The current UTC time as `2026-11-21T10:00:00.123Z`.
pub fn timestamp() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since.as_secs(), since.subsec_millis())
}

/// Formats seconds and milliseconds since the Unix epoch as an RFC 3339 UTC timestamp.
pub fn format_utc(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Prints one step to stdout, timestamped.
#[macro_export]
macro_rules! step {
    ($($arg:tt)*) => {
        println!("[{}] {}", $crate::steplog::timestamp(), format_args!($($arg)*))
    };
}

/// The address of an in-flight operation's `OVERLAPPED` (Windows), or its id elsewhere.
pub fn submitted_overlapped(port: &proactor::Iocp, id: proactor::OpId) -> usize {
    #[cfg(windows)]
    {
        use proactor::windows::IocpExt;
        port.overlapped_address(id).unwrap_or(0)
    }
    #[cfg(not(windows))]
    {
        let _ = port;
        id.as_u64() as usize
    }
}

/// The address a completed operation's `OVERLAPPED` had (Windows), or its id elsewhere.
pub fn completed_overlapped(done: &proactor::Completion) -> usize {
    #[cfg(windows)]
    {
        use proactor::windows::CompletionExt;
        done.overlapped_address()
    }
    #[cfg(not(windows))]
    {
        done.id().as_u64() as usize
    }
}

/// The raw value of a socket, as the OS names it (a `SOCKET` on Windows, an fd elsewhere).
#[cfg(windows)]
pub fn raw_socket<T: std::os::windows::io::AsRawSocket>(s: &T) -> u64 {
    s.as_raw_socket()
}

/// The raw value of a socket, as the OS names it (a `SOCKET` on Windows, an fd elsewhere).
#[cfg(not(windows))]
pub fn raw_socket<T: std::os::fd::AsRawFd>(s: &T) -> u64 {
    s.as_raw_fd() as u64
}

/// The demo's name for an operation kind.
pub fn operation_type(kind: proactor::OpKind) -> &'static str {
    match kind {
        proactor::OpKind::Recv | proactor::OpKind::RecvPooled => "Read",
        proactor::OpKind::Send | proactor::OpKind::SendPooled => "Write",
        proactor::OpKind::Accept => "Accept",
        other => other.name(),
    }
}

/// `code (NAME)` for the codes a socket program meets most, `code` otherwise.
pub fn error_code(err: &io::Error) -> String {
    let Some(code) = proactor::raw_os_error(err) else {
        return err.kind().to_string();
    };
    let name = match code {
        64 => "ERROR_NETNAME_DELETED",
        995 => "ERROR_OPERATION_ABORTED",
        1236 => "ERROR_CONNECTION_ABORTED",
        10053 => "WSAECONNABORTED",
        10054 => "WSAECONNRESET",
        10058 => "WSAESHUTDOWN",
        10060 => "WSAETIMEDOUT",
        #[cfg(unix)]
        104 => "ECONNRESET",
        _ => return code.to_string(),
    };
    format!("{code} ({name})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_255_200, 123), "2026-11-21T10:00:00.123Z");
    }

    #[test]
    fn names_common_codes() {
        assert_eq!(
            error_code(&io::Error::from_raw_os_error(10054)),
            "10054 (WSAECONNRESET)"
        );
        assert_eq!(error_code(&io::Error::from_raw_os_error(7)), "7");
    }
}
