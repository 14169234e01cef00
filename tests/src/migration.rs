//! A migrating cluster for `crossover migrate` end to end (tests/migrate.rs)
//! and the whole-job demo: a lab whose cluster is the fake API server with
//! the cluster sim (evictions with budgets, DaemonSet and ReplicaSet
//! controllers, a scheduler, kubelets addressing pods from their node's
//! network), real agents and probe responders on every node, every pod the
//! sim places made a real lab pod, and a driver running the real binary.
//! Needs root.
use std::{
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use serde_json::Value;

use crate::{
    apiserver::{
        Gvr,
        fixtures::{self, Owner, PdbBuilder, PodBuilder, ReplicaSetBuilder},
        sim::{ClusterSim, SimOptions},
    },
    kubelab::{CROSSOVER, KubeLab, within},
    lab::{Fault, LabSpec, Overlay, PodKind, plan::Network},
    netns::unique,
};

/// The singleton the budget pins to worker-2 until the test relaxes it.
pub const DB_IP: &str = "10.244.2.50";

/// The fixture cluster, plus what the driver meets in life: crossover's
/// agent DaemonSet, and a singleton with a strict disruption budget.
pub fn objects(nodes: usize, with_db: bool) -> Vec<Value> {
    let mut out = fixtures::cluster_with_apps(nodes, 0, 1);
    out.push(fixtures::namespace("crossover"));
    out.push(fixtures::daemonset(
        "crossover",
        "crossover-agent",
        &[("app.kubernetes.io/name", "crossover-agent")],
        true,
        nodes as i32,
    ));
    for j in 0..nodes {
        let node = fixtures::node_name(j);
        let host = crate::lab::plan::underlay_addr(j).to_string();
        out.push(
            PodBuilder::new("crossover", &format!("crossover-agent-{node}"))
                .label("app.kubernetes.io/name", "crossover-agent")
                .node(&node, &host)
                .ip(&host)
                .host_network(true)
                .ready(true)
                .owner(Owner::DaemonSet("crossover-agent".into()))
                .value(),
        );
    }
    if !with_db {
        return out;
    }
    out.push(ReplicaSetBuilder::new("default", "db", &[("app", "db")], 1).value());
    out.push(
        PodBuilder::new("default", "db-0")
            .label("app", "db")
            .node("worker-2", "172.18.0.4")
            .ip(DB_IP)
            .ready(true)
            .owner(Owner::ReplicaSet("db".into()))
            .value(),
    );
    out.push(
        PdbBuilder::new("default", "db", &[("app", "db")])
            .min_available(1)
            .value(),
    );
    out
}

/// Every pod the sim places becomes a lab pod at its address; goldpinger
/// pods (the probe DaemonSet here) get a probe responder.
pub fn feed_the_lab(sim: &ClusterSim, kl: &Arc<Mutex<KubeLab>>, errors: &Arc<Mutex<Vec<String>>>) {
    let (k, e) = (kl.clone(), errors.clone());
    sim.on_pod_placed(move |p| {
        let Some(network) = p.network else { return };
        let mut kl = k.lock().unwrap();
        let probe = p.name.starts_with("goldpinger");
        let kind = if probe {
            PodKind::DaemonSet
        } else {
            PodKind::App
        };
        match kl.lab.add_pod_at(&p.node, &p.name, kind, network, p.ip) {
            Ok(pod) if probe => kl.start_probe(&pod.netns),
            Ok(_) => {}
            Err(err) => e.lock().unwrap().push(format!("placing {p:?}: {err:#}")),
        }
    });
    let (k, e) = (kl.clone(), errors.clone());
    sim.on_pod_removed(move |p| {
        let mut kl = k.lock().unwrap();
        let Some(pod) = kl.lab.pod_at(&p.node, p.ip).cloned() else {
            return;
        };
        kl.stop_probe(&pod.netns);
        if let Err(err) = kl.lab.delete_pod(&p.node, &pod.name) {
            e.lock().unwrap().push(format!("removing {p:?}: {err:#}"));
        }
    });
}

pub struct Driver {
    pub underlay: String,
    pub kubeconfig: String,
    pub log: std::path::PathBuf,
    /// How long pods may take to be Ready, and a drain.
    pub ready_timeout: &'static str,
    pub drain_timeout: &'static str,
}

impl Driver {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.underlay, CROSSOVER])
            .args(args)
            .args(["--kubeconfig", &self.kubeconfig])
            .args(["--poll-interval", "200ms", "--gate-interval", "1s"])
            .args(["--lease-duration", "3s", "--agent-timeout", "2s"])
            // The agents' window and ticks (see start_agents below).
            .args(["--window", "6s", "--sample-interval", "500ms"])
            .args([
                "--ready-timeout",
                self.ready_timeout,
                "--verify-timeout",
                "30s",
            ])
            .args(["--drain-timeout", self.drain_timeout])
            .stdin(Stdio::null());
        c
    }

    /// `crossover report`, which takes none of the driver's timing flags.
    pub fn report(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.underlay, CROSSOVER, "report"])
            .args(args)
            .args(["--kubeconfig", &self.kubeconfig])
            .output()
            .unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

/// 2% over rows of at least 50 packets: one probe lost to a busy 2-core
/// lab is not a breach, a 5% fault is (over three senders and several
/// readings).
pub const RUN: &[&str] = &[
    "migrate",
    "run",
    "--yes",
    "--baseline",
    "0",
    "--soak",
    "4s",
    "--threshold",
    "2%",
    "--min-sent",
    "50",
];

pub fn state(kl: &Arc<Mutex<KubeLab>>) -> Value {
    let kl = kl.lock().unwrap();
    let cm = kl.server.get(
        &Gvr::of::<ConfigMap>(),
        Some("crossover"),
        "crossover-migration",
    );
    cm.and_then(|cm| serde_json::from_str(cm["data"]["state.json"].as_str()?).ok())
        .unwrap_or(Value::Null)
}

pub fn record(kl: &Arc<Mutex<KubeLab>>, node: &str) -> Value {
    let kl = kl.lock().unwrap();
    let name = format!("crossover-migration-node-{node}");
    let cm = kl
        .server
        .get(&Gvr::of::<ConfigMap>(), Some("crossover"), &name);
    cm.and_then(|cm| serde_json::from_str(cm["data"]["record.json"].as_str()?).ok())
        .unwrap_or(Value::Null)
}

pub fn step_of(state: &Value, node: &str) -> String {
    state["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == node))
        .and_then(|n| n["step"].as_str())
        .unwrap_or("")
        .to_string()
}

pub fn node(kl: &Arc<Mutex<KubeLab>>, name: &str) -> Value {
    kl.lock()
        .unwrap()
        .server
        .get(&Gvr::of::<Node>(), None, name)
        .unwrap()
}

/// Whether the driver has the node annotated as under migration (every
/// agent then probes it steadily).
pub fn migrating(kl: &Arc<Mutex<KubeLab>>, name: &str) -> bool {
    let annotation = &node(kl, name)["metadata"]["annotations"]["crossover.io/migrating"];
    assert!(
        annotation.is_null() || annotation == "true",
        "{name}: {annotation}"
    );
    annotation == "true"
}

/// How often each step appears in a node's record, by outcome.
pub fn steps(record: &Value) -> Vec<(String, String)> {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_string(),
                s["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The lab, its API with the sim, real agents and probe responders, and
/// a driver to run against them.
pub struct Migrating {
    pub kl: Arc<Mutex<KubeLab>>,
    pub sim: ClusterSim,
    pub driver: Driver,
    pub errors: Arc<Mutex<Vec<String>>>,
}

pub fn migrating_lab(prefix: &str, nodes: usize, with_db: bool) -> Migrating {
    let mut kl = KubeLab::up(&LabSpec {
        name: unique(prefix),
        nodes,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    });
    for object in objects(nodes, with_db) {
        kl.server.apply(object).unwrap();
    }
    if with_db {
        let db = kl
            .lab
            .add_pod_at(
                "worker-2",
                "db-0",
                PodKind::App,
                Network::Legacy,
                DB_IP.parse().unwrap(),
            )
            .unwrap();
        assert_eq!(db.addr.to_string(), DB_IP);
    }
    kl.start_probes();
    // The gate judges rows of at least --min-sent (50 here) probes, and the
    // probes are this lab's only traffic: every agent probes the node under
    // migration at 10/s (60 probes a series in a 6 s window; at the default
    // 1/s there would be 6), within the default budget.
    kl.start_agents(&[
        "--probe-selector",
        "app=goldpinger",
        "--probe-rate",
        "10",
        "--window",
        "6s",
        "--sample-interval",
        "500ms",
    ]);
    kl.wait_agents_ready();
    let driver = Driver {
        underlay: kl.lab.underlay_ns(),
        kubeconfig: kl.kubeconfig.to_str().unwrap().into(),
        log: kl.dir.join("driver.log"),
        ready_timeout: "30s",
        drain_timeout: "5m",
    };
    let kl = Arc::new(Mutex::new(kl));
    // The first windows hold the start: probes sent before the responders
    // listened. An SRE plans once the agents have run a while.
    wait_clean_window(&kl, nodes);
    let sim = ClusterSim::install(&kl.lock().unwrap().server, SimOptions::default());
    let errors: Arc<Mutex<Vec<String>>> = Default::default();
    feed_the_lab(&sim, &kl, &errors);
    Migrating {
        kl,
        sim,
        driver,
        errors,
    }
}

/// 5% loss on the Cilium overlay from each of `froms` to `to`.
pub fn cilium_loss_towards(kl: &Arc<Mutex<KubeLab>>, froms: &[&str], to: &str) -> Vec<u32> {
    froms
        .iter()
        .map(|from| {
            let fault = Fault::Loss {
                from: from.to_string(),
                to: to.into(),
                overlay: Overlay::Cilium,
                percent: 5.0,
            };
            kl.lock().unwrap().lab.inject(fault).unwrap()
        })
        .collect()
}

/// The lab followed every pod the sim placed or removed.
pub fn no_feed_errors(errors: &Arc<Mutex<Vec<String>>>) {
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Until every agent's window is free of loss (a fault's, the start's).
pub fn wait_clean_window(kl: &Arc<Mutex<KubeLab>>, nodes: usize) {
    within(Duration::from_secs(30), "a window without loss", || {
        let kl = kl.lock().unwrap();
        let rows: Vec<Value> = (0..nodes)
            .flat_map(|j| {
                let loss = kl.get_json(&kl.url(j, "/api/v1/loss"));
                loss["rows"].as_array().cloned().unwrap_or_default()
            })
            .collect();
        (!rows.is_empty() && rows.iter().all(|r| r["lost"] == 0)).then_some(())
    });
}
