//! A lab whose cluster is the fake API server: the server listens on the
//! underlay bridge (172.18.0.1, reachable from every node as a real API
//! server is), and `crossover agent --kubeconfig` runs in every node's
//! namespace, host network, as the DaemonSet does: listening on the node's
//! address, checking bearer tokens with the server (the lab's readers send
//! [`ADMIN_TOKEN`], the kubeconfig's). Each test applies its own objects.
//! Needs root.
use std::{
    collections::HashMap,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    apiserver::{
        ADMIN_TOKEN, FakeApiServer,
        fixtures::{self, PodBuilder},
    },
    lab::{Lab, LabSpec, LegacyCni, PodKind, plan},
    netns::{http_get_as, in_netns, sh},
};

pub const CROSSOVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/crossover");
pub const AGENT_PORT: u16 = 9190;
pub const PROBE_PORT: u16 = 9191;
/// The API server's address on the lab's underlay bridge.
pub const API_ADDR: &str = "172.18.0.1";

pub struct KubeLab {
    pub lab: Lab,
    pub server: FakeApiServer,
    /// Kubeconfig, agents' logs.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    agents: Vec<Child>,
    /// Probe responders by the pod network namespace they answer in.
    probes: HashMap<String, Child>,
}

impl KubeLab {
    pub fn up(spec: &LabSpec) -> KubeLab {
        let lab = Lab::up(spec).unwrap().remove_on_drop();
        sh(&[
            "ip",
            "-n",
            &lab.underlay_ns(),
            "addr",
            "add",
            &format!("{API_ADDR}/16"),
            "dev",
            "underlay",
        ]);
        let listener = in_netns(&lab.underlay_ns(), || {
            TcpListener::bind((API_ADDR, 0)).unwrap()
        });
        let server = FakeApiServer::start_on(listener).unwrap();
        let dir = std::env::temp_dir().join(format!("crossover-kube-{}", lab.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        server.write_kubeconfig(&kubeconfig).unwrap();
        KubeLab {
            lab,
            server,
            dir,
            kubeconfig,
            agents: Vec::new(),
            probes: HashMap::new(),
        }
    }

    /// [`KubeLab::up`] with the lab's own objects applied ([`objects`]).
    pub fn up_with_objects(spec: &LabSpec) -> KubeLab {
        let kl = KubeLab::up(spec);
        for object in objects(&kl.lab) {
            kl.server.apply(object).unwrap();
        }
        kl
    }

    /// `crossover agent --kubeconfig` on every node, with `extra` flags.
    pub fn start_agents(&mut self, extra: &[&str]) {
        let nodes: Vec<String> = self.lab.nodes().map(|n| n.name.clone()).collect();
        for node in nodes {
            self.start_agent(&node, extra);
        }
    }

    /// `crossover agent --kubeconfig` on `node`, with `extra` flags; its
    /// log is [`KubeLab::agent_log`].
    pub fn start_agent(&mut self, node: &str, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{node}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.lab.node_ns(node), CROSSOVER, "agent"])
            .args(["--kubeconfig", self.kubeconfig.to_str().unwrap()])
            .args(["--node-name", node])
            .args(["--probe-port", &PROBE_PORT.to_string()])
            .args(extra)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{CROSSOVER}: {e} (cargo build --bin crossover)"));
        self.agents.push(child);
    }

    /// What `node`'s agent logged so far.
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{node}.log"))).unwrap_or_default()
    }

    /// A `crossover probe` responder inside a pod's namespace: what the
    /// probe DaemonSet's pod runs.
    pub fn start_probe(&mut self, pod_netns: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("probes.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", pod_netns, CROSSOVER, "probe"])
            .args(["--listen", &format!("0.0.0.0:{PROBE_PORT}")])
            .stderr(log)
            .spawn()
            .unwrap();
        if let Some(mut old) = self.probes.insert(pod_netns.into(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// A responder in every DaemonSet pod of the lab (the probe pods).
    pub fn start_probes(&mut self) {
        let netns: Vec<String> = self
            .lab
            .nodes()
            .flat_map(|n| n.pods.iter())
            .filter(|p| p.kind == PodKind::DaemonSet)
            .map(|p| p.netns.clone())
            .collect();
        for ns in netns {
            self.start_probe(&ns);
        }
    }

    pub fn stop_probe(&mut self, pod_netns: &str) {
        if let Some(mut child) = self.probes.remove(pod_netns) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Agent `j`'s URL for `path`.
    pub fn url(&self, j: usize, path: &str) -> String {
        format!("http://{}:{AGENT_PORT}{path}", plan::underlay_addr(j))
    }

    pub fn agent_urls(&self) -> Vec<String> {
        (0..self.lab.nodes().count())
            .map(|j| self.url(j, ""))
            .collect()
    }

    /// GET from the control-plane node with the admin's token, as JSON
    /// (`Null` when not JSON; said on stderr unless nothing answered yet,
    /// status 0).
    pub fn get_json(&self, url: &str) -> Value {
        let (status, body) =
            http_get_as(&self.lab.node_ns("control-plane"), url, Some(ADMIN_TOKEN));
        serde_json::from_str(&body).unwrap_or_else(|_| {
            if status != 0 {
                eprintln!("{url}: {status} {body}");
            }
            Value::Null
        })
    }

    /// Every agent ready and reading its counters on ticks.
    pub fn wait_agents_ready(&self) {
        let n = self.lab.nodes().count();
        for j in 0..n {
            within(
                Duration::from_secs(30),
                &format!(
                    "agent {j} ready and reading ticks (logs in {})",
                    self.dir.display()
                ),
                || {
                    let status = self.get_json(&self.url(j, "/api/v1/status"));
                    // Ticks over 2 s at least: a reading just after this
                    // has a window from every agent.
                    let (oldest, newest) = (
                        status["oldest_tick_ms"].as_u64()?,
                        status["newest_tick_ms"].as_u64()?,
                    );
                    (status["ready"] == true && oldest > 0 && newest >= oldest + 2000).then_some(())
                },
            );
        }
    }
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.probes.values_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` until it returns something, for at most `limit`; panics
/// naming `what` otherwise. Returns the value and how long it took.
pub fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = f() {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lab as the API sees it: the fixture cluster's nodes, CiliumNodes and
/// configuration, with the lab's real pods instead of the fixture's, the
/// agent pods (host network) and the lab's DaemonSet pods as probe pods.
pub fn objects(lab: &Lab) -> Vec<Value> {
    let nodes = lab.nodes().count();
    let migrated = lab.nodes().filter(|n| n.migrated).count();
    let aws = lab.state().legacy == LegacyCni::AwsNative;
    let mut out: Vec<Value> = fixtures::cluster_with_apps(nodes, migrated, 0)
        .into_iter()
        .filter(|o| o["kind"] != "Pod")
        // The AWS VPC CNI's nodes: EC2 instances without ranges.
        .map(|o| match o["kind"].as_str() {
            Some("Node") if aws => aws_node(lab, &o),
            _ => o,
        })
        .collect();
    out.push(fixtures::namespace("crossover"));
    for (j, node) in lab.nodes().enumerate() {
        let host = plan::underlay_addr(j).to_string();
        out.push(
            PodBuilder::new("crossover", &format!("crossover-agent-{j}"))
                .node(&node.name, &host)
                .ip(&host)
                .host_network(true)
                .label("app.kubernetes.io/name", "crossover-agent")
                .value(),
        );
        for pod in &node.pods {
            let probe = pod.kind == PodKind::DaemonSet;
            let (key, value) = if probe {
                ("app.kubernetes.io/name", "crossover-probe")
            } else {
                ("app", "demo")
            };
            out.push(
                // Lab pod names repeat per node; the API's are unique.
                PodBuilder::new("default", &format!("{}-{}", node.name, pod.name))
                    .node(&node.name, &host)
                    .ip(&pod.addr.to_string())
                    .ready(true)
                    .label(key, value)
                    .value(),
            );
        }
    }
    out
}

/// The fixture's Node `node` as the AWS VPC CNI's cluster has it, with the
/// fixture's labels (the migration's among them).
fn aws_node(lab: &Lab, node: &Value) -> Value {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let j = lab.state().node_index(name).expect("a lab node");
    let mut aws = fixtures::NodeBuilder::aws_lab(j).value();
    aws["metadata"]["labels"] = node["metadata"]["labels"].clone();
    aws
}
