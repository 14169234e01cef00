//! CPU, memory and threads of a process, from /proc.
use std::{collections::BTreeMap, fs, time::Instant};

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// (name, utime + stime in ticks) from a /proc stat file.
pub fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    // After "pid (comm) ": state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

pub struct ProcSample {
    pub at: Instant,
    pub ticks: u64,
    /// tid -> (name, ticks)
    pub threads: BTreeMap<u32, (String, u64)>,
}

impl ProcSample {
    pub fn take(pid: i32) -> Self {
        let mut threads = BTreeMap::new();
        for entry in fs::read_dir(format!("/proc/{pid}/task")).expect("agent tasks") {
            let Ok(entry) = entry else { continue };
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if let Some(t) = stat_ticks(&format!("/proc/{pid}/task/{tid}/stat")) {
                threads.insert(tid, t);
            }
        }
        let (_, ticks) = stat_ticks(&format!("/proc/{pid}/stat"))
            .unwrap_or_else(|| panic!("/proc/{pid}/stat: the agent is gone"));
        ProcSample {
            at: Instant::now(),
            ticks,
            threads,
        }
    }
}

/// CPU per thread name over the window (threads born during the window
/// count from zero), busiest first.
pub fn per_thread(before: &ProcSample, after: &ProcSample, wall: f64) -> Vec<(String, usize, f64)> {
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for (tid, (name, ticks)) in &after.threads {
        let start = before.threads.get(tid).map_or(0, |(_, t)| *t);
        let e = by_name.entry(name.clone()).or_default();
        e.0 += 1;
        e.1 += ticks.saturating_sub(start);
    }
    let mut out: Vec<(String, usize, f64)> = by_name
        .into_iter()
        .map(|(name, (n, ticks))| (name, n, ticks as f64 / clock_ticks() / wall * 100.0))
        .collect();
    out.sort_by(|a, b| b.2.total_cmp(&a.2));
    out
}

/// The single busiest thread over the window.
pub fn busiest_thread(before: &ProcSample, after: &ProcSample, wall: f64) -> (String, f64) {
    after
        .threads
        .iter()
        .map(|(tid, (name, ticks))| {
            let start = before.threads.get(tid).map_or(0, |(_, t)| *t);
            let pct = ticks.saturating_sub(start) as f64 / clock_ticks() / wall * 100.0;
            (format!("{name} (tid {tid})"), pct)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_default()
}
