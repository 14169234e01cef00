//! The agent under measurement: its process and its HTTP endpoints.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::topology::Lab;
use crate::netns::in_netns;

/// Where the agent listens, inside its namespace.
pub const LISTEN: &str = "127.0.0.1:9190";

/// The agent process (`ip netns exec` execs it: same pid), stopped with
/// SIGTERM on drop (SIGKILL after 10 s).
pub struct Agent {
    pub child: Child,
    pub pid: i32,
    pub log: PathBuf,
    /// The process's name once exec'd: the binary's file name, as the
    /// kernel keeps it (15 bytes at most), whatever a build is called.
    comm: String,
}

impl Agent {
    pub fn start(lab: &Lab, binary: &Path, args: &[String]) -> Self {
        let log = lab.dir.0.join("agent.log");
        let file = fs::File::create(&log).expect("agent log");
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.agent.name])
            .arg(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("spawn ip netns exec");
        let pid = child.id() as i32;
        let comm: String = binary
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(15).collect())
            .unwrap_or_default();
        let agent = Agent {
            child,
            pid,
            log,
            comm,
        };
        // Until `ip` has exec'd the agent, the pid's comm is "ip".
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == agent.comm {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} is {:?}, not the agent; log: {}",
                comm.trim(),
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn wait_ready(&self, ns: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if fs::read_to_string(format!("/proc/{}/comm", self.pid))
                .map_or(true, |c| c.trim() != self.comm)
            {
                panic!(
                    "the agent exited before it was ready; log: {}",
                    self.log_tail()
                );
            }
            if get(ns, "/readyz", Duration::from_secs(5)).0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz not 200 after 120 s; log: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: a signal to the child we spawned, which we have not
        // reaped yet, so the pid is still ours.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` of the agent from inside its namespace: (status, body),
/// status 0 when nothing answered within `timeout`.
pub fn get(ns: &str, path: &str, timeout: Duration) -> (u16, String) {
    let url = format!("http://{LISTEN}{path}");
    in_netns(ns, move || {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .build(),
        );
        match agent.get(&url).call() {
            Ok(mut response) => (
                response.status().as_u16(),
                response
                    .body_mut()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_string()
                    .unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    })
}
