//! Readers against a simulated fleet (tests/src/simulated_agents.rs, run
//! as `target/release/fleet` in its own process): the real
//! `crossover loss` binary reading N agents over real HTTP on loopback,
//! its wall time and peak memory (`ru_maxrss` of the child). The gate's
//! reading is `crossover loss --node` (the same `loss::cluster::read`,
//! node under migration exactly, totals, drill-down); the default view is
//! `crossover loss`. A baseline binary (`SCALE_READER_BASELINE`, a build
//! from before the reading API) reads the same fleet's `/api/v1/loss`,
//! which serves what an agent of that build served: a row per peer and
//! overlay.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Fleet {
    child: Child,
    pub urls: Vec<String>,
}

impl Fleet {
    pub fn start(fleet: &Path, nodes: usize, extra: &[&str]) -> Fleet {
        let mut child = Command::new(fleet)
            .arg(nodes.to_string())
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", fleet.display()));
        let mut urls = Vec::with_capacity(nodes);
        let stdout = child.stdout.take().expect("piped");
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("the fleet's stdout");
            if line == "ready" {
                break;
            }
            urls.push(line);
        }
        assert_eq!(urls.len(), nodes, "the fleet did not start");
        Fleet { child, urls }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Run {
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub status: i32,
    pub stdout: Vec<u8>,
}

/// Runs `binary args... --agent URL...` and measures it.
pub fn run(binary: &Path, args: &[&str], urls: &[String]) -> Run {
    let mut command = Command::new(binary);
    command.args(args);
    for url in urls {
        command.args(["--agent", url]);
    }
    let started = Instant::now();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let pid = child.id() as libc::pid_t;
    // Read the output first (a full pipe would stall the child), then reap
    // it with wait4 for its own rusage.
    let output = std::thread::spawn(move || {
        let mut child = child;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        use std::io::Read;
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_end(&mut stderr);
        }
        std::mem::forget(child);
        (stdout, stderr)
    })
    .join()
    .expect("reading the child's output");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped (its Child was forgotten).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = started.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) <= 2) {
        panic!(
            "{} {}: status {status}: {}",
            binary.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.1)
        );
    }
    Run {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        status: libc::WEXITSTATUS(status),
        stdout: output.0,
    }
}
