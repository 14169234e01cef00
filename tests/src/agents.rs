//! `crossover agent` on every node of a lab, as the DaemonSet runs it:
//! inside the node's namespace (host network), configured from the lab's
//! shape file, listening on every address of the node. Needs root.
use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{
    lab::{Lab, LabSpec},
    netns::{http_get, unique},
};

pub const CROSSOVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/crossover");
pub const PORT: u16 = 9190;

pub struct Agents {
    children: Vec<Child>,
    /// Each agent's URL, on its node's underlay address, in node order.
    pub urls: Vec<String>,
    /// Arguments every agent gets besides its config.
    extra: Vec<String>,
    dir: std::path::PathBuf,
}

impl Agents {
    /// A 3-node lab (worker-1 migrated, no pods) with an agent on every
    /// node, probes on at one a second: the large probes' labs.
    pub fn probed_lab(prefix: &str) -> (Lab, Agents) {
        let lab = Lab::up(&LabSpec {
            name: unique(prefix),
            nodes: 3,
            migrated: 1,
            pods: 0,
            ..LabSpec::default()
        })
        .unwrap()
        .remove_on_drop();
        let agents = Self::start_with(&lab, &["--probe-rate", "1"]);
        (lab, agents)
    }

    /// One agent per node, inside the node's namespace (host network, as
    /// the DaemonSet runs), configured from the lab's shape file.
    pub fn start(lab: &Lab) -> Agents {
        Self::start_with(lab, &[])
    }

    /// `extra` may hold `{node}`, replaced by the node's name.
    pub fn start_with(lab: &Lab, extra: &[&str]) -> Agents {
        let agents = Self::spawn_all(lab, extra);
        agents.wait_ready(lab);
        agents
    }

    /// [`Agents::start_with`] without waiting for them to be ready.
    pub fn spawn_all(lab: &Lab, extra: &[&str]) -> Agents {
        let dir = std::env::temp_dir().join(format!("crossover-agents-{}", lab.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut agents = Agents {
            children: Vec::new(),
            urls: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        for (j, node) in lab.nodes().enumerate() {
            let child = agents.spawn(lab, &node.name);
            agents.children.push(child);
            agents
                .urls
                .push(format!("http://{}:{PORT}", lab.state().underlay_addr(j)));
        }
        agents
    }

    fn spawn(&self, lab: &Lab, node: &str) -> Child {
        let config = self.dir.join(format!("{node}.json"));
        std::fs::write(
            &config,
            serde_json::to_vec(&lab.shape(node).unwrap()).unwrap(),
        )
        .unwrap();
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|a| a.replace("{node}", node))
            .collect();
        Command::new("ip")
            .args(["netns", "exec", &lab.node_ns(node), CROSSOVER, "agent"])
            .args([
                "--config",
                config.to_str().unwrap(),
                "--iface",
                "eth0=underlay",
            ])
            .args(["--listen", &format!("0.0.0.0:{PORT}")])
            // Longer than the test: every window starts before the
            // traffic, so window figures equal the fault's drops.
            .args(["--window", "60s", "--sample-interval", "500ms"])
            // No probes unless asked for: their steady trickle through the
            // fault would keep the drop counter moving between the
            // readings compared here. Probes are tested with the API
            // server (tests/kube.rs) and by the MTU black hole's test.
            .args(if extra.iter().any(|a| a == "--probe-rate") {
                &[][..]
            } else {
                &["--probe-rate", "0"][..]
            })
            .args(&extra)
            .stderr(std::fs::File::create(self.dir.join(format!("{node}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{CROSSOVER}: {e} (cargo build -p observer --bin crossover)")
            })
    }

    /// Kills agent `j` without warning (a crash, an OOM kill) and starts it
    /// again.
    pub fn crash_and_restart(&mut self, lab: &Lab, j: usize) {
        self.kill(j);
        self.restart(lab, j);
    }

    /// Kills agent `j` without warning (SIGKILL) and waits for it to end.
    pub fn kill(&mut self, j: usize) {
        let child = &mut self.children[j];
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts agent `j` again (after [`Agents::kill`]) and waits until
    /// every agent is ready.
    pub fn restart(&mut self, lab: &Lab, j: usize) {
        let node = lab.nodes().nth(j).unwrap().name.clone();
        self.children[j] = self.spawn(lab, &node);
        self.wait_ready(lab);
    }

    pub fn wait_ready(&self, lab: &Lab) {
        let ns = lab.node_ns("control-plane");
        for url in self.urls.clone() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while http_get(&ns, &format!("{url}/readyz")).0 != 200 {
                assert!(
                    Instant::now() < deadline,
                    "{url} never became ready; logs in {}",
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Windows start from each agent's first tick.
        for url in self.urls.clone() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let status: serde_json::Value =
                    serde_json::from_str(&http_get(&ns, &format!("{url}/api/v1/status")).1)
                        .unwrap_or_default();
                let tick = |name: &str| status[name].as_u64().unwrap_or(0);
                if tick("oldest_tick_ms") > 0
                    && tick("newest_tick_ms") >= tick("oldest_tick_ms") + 1000
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} never read a tick: {status:#}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn stop(mut self) -> Vec<i32> {
        let codes = self
            .children
            .iter_mut()
            .map(|child| {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                child.wait().unwrap().code().unwrap_or(-1)
            })
            .collect();
        self.children.clear();
        codes
    }
}

impl Agents {
    /// `crossover loss --since-start --format json` run in network
    /// namespace `ns` against every agent: the delivery matrix.
    pub fn loss_since_start(&self, ns: &str) -> Vec<serde_json::Value> {
        serde_json::from_value(self.loss_json(ns, &["--since-start"])).unwrap()
    }

    /// `crossover loss --format json ARGS` run in network namespace `ns`
    /// against every agent; it must succeed.
    pub fn loss_json(&self, ns: &str, args: &[&str]) -> serde_json::Value {
        let out = self.loss(ns, &[&["--format", "json"], args].concat());
        serde_json::from_str(&out).unwrap()
    }

    /// `crossover loss ARGS` run in network namespace `ns` against every
    /// agent: what it printed; it must succeed.
    pub fn loss(&self, ns: &str, args: &[&str]) -> String {
        let mut loss = Command::new("ip");
        loss.args(["netns", "exec", ns, CROSSOVER, "loss"]);
        loss.args(args);
        for url in &self.urls {
            loss.args(["--agent", url]);
        }
        let out = loss.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The value of `series` (name and labels, as rendered) in a `/metrics`
/// body.
pub fn metric<T: std::str::FromStr>(body: &str, series: &str) -> T {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// The matrix's row from node `from` to `to` on `overlay`, `src` to `dst`
/// network.
pub fn loss_row<'a>(
    matrix: &'a [serde_json::Value],
    from: &str,
    to: &str,
    overlay: &str,
    (src, dst): (&str, &str),
) -> &'a serde_json::Value {
    matrix
        .iter()
        .find(|d| {
            d["node"] == from
                && d["peer_node"] == to
                && d["overlay"] == overlay
                && d["src_net"] == src
                && d["dst_net"] == dst
        })
        .unwrap_or_else(|| panic!("no {from} -> {to} {overlay} {src}->{dst} in {matrix:#?}"))
}

/// Checks a faulted row: at least `sent_at_least` sent, and exactly the
/// wire's `drops` not received. Returns (sent, received).
pub fn assert_wire_drops(row: &serde_json::Value, sent_at_least: u64, drops: u64) -> (u64, u64) {
    let (sent, received) = (
        row["sent"].as_u64().unwrap(),
        row["received"].as_u64().unwrap(),
    );
    assert!(sent >= sent_at_least, "{row}");
    assert_eq!(
        sent - received,
        drops,
        "loss from the agents is what the wire dropped"
    );
    (sent, received)
}

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
