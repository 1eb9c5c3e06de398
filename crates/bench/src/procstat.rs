//! What `/proc` says about a process: CPU time and resident memory; and the machine's load.

use std::time::Duration;

/// User plus system CPU time a process has used (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time the whole machine spent running tasks (user, nice, system) and lost to the
/// hypervisor (steal), from `/proc/stat`'s `cpu` line: `(running, steal)`. Interrupt time is left
/// out: loopback traffic's softirq work belongs to the run being measured.
pub fn machine_busy() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let (running, steal) = (v.first()? + v.get(1)? + v.get(2)?, *v.get(7)?);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    Some((time(running), time(steal)))
}

/// The one-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The kernel's TCP memory pressure threshold in bytes: the middle value of
/// `net.ipv4.tcp_mem` (pages). Above it the kernel shrinks socket buffers, prunes receive
/// queues and drops segments; past the third value it aborts connections.
pub fn tcp_mem_pressure_bytes() -> Option<u64> {
    let mem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let pages: u64 = mem.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

/// How many times TCP has entered memory pressure since boot (`TCPMemoryPressures` in
/// `/proc/net/netstat`).
pub fn tcp_memory_pressures() -> Option<u64> {
    netstat_counter(
        &std::fs::read_to_string("/proc/net/netstat").ok()?,
        "TcpExt:",
        "TCPMemoryPressures",
    )
}

/// One counter of `/proc/net/netstat`, which lists each group as a line of names followed by a
/// line of values, both starting with the group's prefix.
fn netstat_counter(netstat: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with(group));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(me).unwrap() > Duration::ZERO);
        assert!(rss_kib(me).unwrap() > 0);
        assert!(machine_busy().unwrap().0 > Duration::ZERO);
        assert!(tcp_mem_pressure_bytes().unwrap() > 0);
        assert!(tcp_memory_pressures().is_some());
    }

    #[test]
    fn finds_a_netstat_counter_by_name() {
        let netstat = "TcpExt: SyncookiesSent TCPMemoryPressures PruneCalled\n\
                       TcpExt: 1 312 7\n\
                       IpExt: InNoRoutes TCPMemoryPressures\n\
                       IpExt: 5 9\n";
        assert_eq!(
            netstat_counter(netstat, "TcpExt:", "TCPMemoryPressures"),
            Some(312)
        );
        assert_eq!(netstat_counter(netstat, "TcpExt:", "PruneCalled"), Some(7));
        assert_eq!(
            netstat_counter(netstat, "IpExt:", "TCPMemoryPressures"),
            Some(9)
        );
        assert_eq!(netstat_counter(netstat, "TcpExt:", "Missing"), None);
    }
}
