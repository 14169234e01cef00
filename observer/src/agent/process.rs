//! The agent's own process in `/metrics`: the standard `process_*`
//! families every Prometheus client exports (CPU, memory, start time, file
//! descriptors, threads), read from /proc at scrape time, and
//! `crossover_build_info`. Hand-written: five numbers from two files and
//! a directory count do not need a client library or `procfs`'s dozens of
//! modules. Families whose source cannot be read are left out (and the
//! miss counted in `crossover_errors_total{reason="io"}` by the caller),
//! never exported as 0.
use std::fs;

use crate::{Error, exposition::family};

/// What one reading of /proc/self found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

/// The fields of `/proc/self/stat` used here, after the command name
/// (which may hold spaces and parentheses, so the split is at the last
/// `)`). Field numbers as in proc(5), counted from 1.
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts with field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of /proc/stat: boot time, seconds since the epoch.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf(3) reads a constant of the system.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

impl Process {
    /// Reads this process; an error names the file that failed.
    pub fn read() -> crate::Result<Process> {
        let read = |path: &str| fs::read_to_string(path).map_err(|e| Error::io(path, e));
        let bad = |what: &str| Error::io(what, std::io::ErrorKind::InvalidData.into());
        let stat = parse_stat(&read("/proc/self/stat")?)
            .ok_or_else(|| bad("/proc/self/stat: unexpected format"))?;
        let boot =
            parse_boot_time(&read("/proc/stat")?).ok_or_else(|| bad("/proc/stat: no btime"))?;
        let ticks = sysconf(libc::_SC_CLK_TCK).ok_or_else(|| bad("sysconf(_SC_CLK_TCK)"))? as f64;
        let page = sysconf(libc::_SC_PAGESIZE).ok_or_else(|| bad("sysconf(_SC_PAGESIZE)"))?;
        let open_fds = fs::read_dir("/proc/self/fd")
            .map_err(|e| Error::io("/proc/self/fd", e))?
            .count() as u64;
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes into the struct it is given.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY)
            .then_some(limit.rlim_cur);
        Ok(Process {
            cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks,
            resident_bytes: stat.rss_pages * page,
            virtual_bytes: stat.vsize,
            start_time_seconds: boot as f64 + stat.start_ticks as f64 / ticks,
            threads: stat.threads,
            // read_dir's own descriptor is among them.
            open_fds: open_fds.saturating_sub(1),
            max_fds,
        })
    }

    /// The `process_*` families, without labels, as every client library
    /// writes them (the target's labels say which agent).
    pub fn write(&self, out: &mut String) {
        let none: &[(&str, &str)] = &[];
        let families: [(&'static str, &str, &str, f64); 6] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size, in bytes.",
                self.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size, in bytes.",
                self.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                self.start_time_seconds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                self.open_fds as f64,
            ),
            (
                "process_threads",
                "gauge",
                "Threads of the process.",
                self.threads as f64,
            ),
        ];
        for (name, kind, help, value) in families {
            family(out, name, kind, help).sample(none, value);
        }
        if let Some(max) = self.max_fds {
            family(
                out,
                "process_max_fds",
                "gauge",
                "Limit of open file descriptors (RLIMIT_NOFILE).",
            )
            .sample(none, max);
        }
    }
}

/// `crossover_build_info{node,version,peer_abi} 1`: which build runs where,
/// for dashboards and for spotting a half-rolled-out upgrade.
pub fn write_build_info(out: &mut String, node: &str) {
    let abi = observer_ebpf::PEER_ABI_VERSION.to_string();
    family(
        out,
        "crossover_build_info",
        "gauge",
        "Always 1: the agent's version and the version of its per-peer counters' kernel ABI.",
    )
    .sample(
        &[
            ("node", node),
            ("version", env!("CARGO_PKG_VERSION")),
            ("peer_abi", &abi),
        ],
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_with_spaces_and_parentheses() {
        // proc(5) order; command "a) b" as a process may name itself.
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1234 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat).unwrap();
        assert_eq!((s.utime_ticks, s.stime_ticks), (250, 50));
        assert_eq!((s.threads, s.start_ticks), (7, 1234));
        assert_eq!((s.vsize, s.rss_pages), (104_857_600, 2560));
        assert!(parse_stat("42 (x) S 1 2").is_none());
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reads_and_writes_every_family() {
        let p = Process::read().unwrap();
        assert!(
            p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3,
            "{p:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 3600.0);
        let mut out = String::new();
        p.write(&mut out);
        write_build_info(&mut out, "n1");
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_threads ",
        ] {
            assert!(out.lines().any(|l| l.starts_with(name)), "{name}: {out}");
        }
        let (version, abi) = (env!("CARGO_PKG_VERSION"), observer_ebpf::PEER_ABI_VERSION);
        assert!(out.contains(&format!(
            "crossover_build_info{{node=\"n1\",version=\"{version}\",peer_abi=\"{abi}\"}} 1"
        )));
    }
}
