//! CPU time and resident memory of a process, read from /proc (Linux only).
//!
//! Server CPU per operation is the figure a client-bound benchmark cannot cap (both share two
//! cores here), so every run samples the server's and its own utime+stime before and after.
//! `/proc/PID/stat` counts every thread of the process, which is what we want for a
//! multi-threaded server. Resolution is one clock tick (10 ms at the usual 100 Hz), which is
//! below 0.2 % of a 10 s run on two cores.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::BenchError;

/// Which process to sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// The load generator itself.
    Current,
    /// Another process, e.g. the server under test.
    Pid(u32),
}

impl Process {
    fn path(self, file: &str) -> PathBuf {
        match self {
            Self::Current => PathBuf::from(format!("/proc/self/{file}")),
            Self::Pid(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        }
    }
}

/// User plus system CPU time consumed so far by all threads of `process`.
pub fn cpu_time(process: Process) -> Result<Duration, BenchError> {
    let path = process.path("stat");
    let text = read(&path)?;
    let ticks = parse_stat_cpu_ticks(&text).map_err(|reason| BenchError::ProcFormat { path: path.clone(), reason })?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// Resident set size in KiB (`VmRSS` of /proc/PID/status).
pub fn resident_kib(process: Process) -> Result<u64, BenchError> {
    let path = process.path("status");
    let text = read(&path)?;
    parse_vm_rss_kib(&text).ok_or(BenchError::ProcFormat { path, reason: "no VmRSS line (kernel thread or zombie?)" })
}

fn read(path: &PathBuf) -> Result<String, BenchError> {
    fs::read_to_string(path).map_err(|source| BenchError::ProcRead { path: path.clone(), source })
}

/// Sum of `utime` and `stime` (fields 14 and 15 of proc(5)), in clock ticks.
///
/// The second field, `comm`, is parenthesised and may itself hold spaces and parentheses
/// (`tokio-runtime-w`, or a binary named `a) b`), so fields are counted after the *last* `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Result<u64, &'static str> {
    let after_comm = stat.rfind(')').map(|i| &stat[i + 1..]).ok_or("no ')' closing the comm field")?;
    // After `comm` comes field 3 (`state`), so utime (14) and stime (15) are at indexes 11, 12.
    let mut fields = after_comm.split_ascii_whitespace().skip(11);
    let mut next_number = || -> Result<u64, &'static str> {
        fields.next().ok_or("fewer than 15 fields")?.parse::<u64>().map_err(|_| "utime or stime is not a number")
    };
    let utime = next_number()?;
    let stime = next_number()?;
    Ok(utime + stime)
}

/// The `VmRSS:` value in KiB, if present.
fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status_kib(status, "VmRSS:")
}

/// A `Vm…` line of /proc/PID/status, in KiB: it reads `VmRSS:     12345 kB` (always kB).
fn status_kib(status: &str, field: &str) -> Option<u64> {
    let rest = status.lines().find_map(|line| line.strip_prefix(field))?;
    rest.split_ascii_whitespace().next()?.parse().ok()
}

/// The peak resident set size of the process's life so far in KiB (`VmHWM`).
pub fn peak_resident_kib(process: Process) -> Result<u64, BenchError> {
    let path = process.path("status");
    let text = read(&path)?;
    status_kib(&text, "VmHWM:")
        .ok_or(BenchError::ProcFormat { path, reason: "no VmHWM line (kernel thread or zombie?)" })
}

fn ticks_to_duration(ticks: u64, ticks_per_second: u64) -> Duration {
    let micros = u128::from(ticks) * 1_000_000 / u128::from(ticks_per_second.max(1));
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// The kernel's USER_HZ, the unit of the /proc/PID/stat times.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a configuration constant; it takes an integer and touches no
    // memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // sysconf returns -1 when the name is unknown; 100 is USER_HZ on every Linux port.
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (etcd) S 1 4242 4242 0 -1 4194560 15020 0 0 0 \
                        731 129 0 0 20 0 12 0 1234567 11111111 5000 18446744073709551615";

    #[test]
    fn parse_stat_plain_comm_sums_utime_and_stime() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Ok(731 + 129));
    }

    #[test]
    fn parse_stat_comm_with_spaces_and_parens_counts_after_last_paren() {
        let stat = STAT.replace("(etcd)", "(a) b (c) d)");
        assert_eq!(parse_stat_cpu_ticks(&stat), Ok(860));
    }

    #[test]
    fn parse_stat_truncated_line_is_an_error() {
        assert!(parse_stat_cpu_ticks("1 (x) S 1 2 3").is_err());
        assert!(parse_stat_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn parse_status_vm_rss_reads_kib() {
        let status = "Name:\tetcd\nVmPeak:\t  999 kB\nVmRSS:\t   45312 kB\nThreads:\t12\n";
        assert_eq!(parse_vm_rss_kib(status), Some(45_312));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn ticks_convert_at_user_hz() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2_500));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
    }

    #[test]
    fn own_process_is_readable() {
        let cpu = cpu_time(Process::Current).expect("own /proc/self/stat");
        assert!(cpu < Duration::from_secs(3600));
        assert!(resident_kib(Process::Current).expect("own VmRSS") > 0);
    }
}
