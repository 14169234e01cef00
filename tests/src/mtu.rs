//! The MTU black holes the tests make, and how their naming reads,
//! whichever source (the agents, Prometheus) the rows came from: the
//! large probes' (a wire that drops big tunnel packets without a word)
//! and a router's (a smaller MTU on a tunnel's path that sets DF, whose
//! ICMP only the node hears).
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use observer::{
    loss::{LossRow, dropped::DropRow},
    migrate::gate::{self, Breach, GateScope, Thresholds},
};
use serde_json::Value;

use crate::lab::{
    Fault, Lab, LabSpec, LegacyCni, Overlay,
    exec::in_ns,
    plan,
    traffic::{self, Endpoint, StreamReport},
};

/// Both ways between worker-1 and worker-2 on the Cilium overlay, the wire
/// drops that tunnel's packets over 1450 bytes, without ICMP: 1400-byte
/// packets (1450 once VXLAN's 50 bytes are added) pass.
pub fn black_hole() -> Fault {
    Fault::MtuBlackhole {
        a: "worker-1".into(),
        b: "worker-2".into(),
        overlay: Overlay::Cilium,
        mtu: 1450,
    }
}

/// The rows the black hole is on, as [`pair_name`] names them.
pub const PAIR: [&str; 2] = ["worker-1 -> worker-2 cilium", "worker-2 -> worker-1 cilium"];

/// "node -> peer overlay" of a loss row.
pub fn pair_name(r: &Value) -> String {
    let label = |name: &str| r[name].as_str().unwrap_or_default().to_owned();
    format!(
        "{} -> {} {}",
        label("node"),
        label("peer_node"),
        label("overlay")
    )
}

/// Whether `crossover loss -o table`'s footer names the black hole with
/// the size probed and the size that fits.
pub fn table_names_black_hole(table: &str) -> bool {
    table.lines().any(|l| {
        l.starts_with("mtu: MTU black hole on worker-")
            && l.contains(", cilium overlay: 1450-byte packets lost, 1400 pass")
    })
}

/// A 4-node Calico VXLAN CrossSubnet lab, no node migrated, a pod each:
/// its underlay namespace routes between the two subnets.
pub fn cross_subnet_lab(name: String) -> Result<Lab> {
    Lab::up(&LabSpec {
        name,
        nodes: 4,
        migrated: 0,
        pods: 1,
        legacy: LegacyCni::CalicoCrossSubnet,
    })
}

/// The router's black hole in a [`cross_subnet_lab`]: its interface
/// towards worker-1's subnet lowered to 1400, the control plane's
/// `vxlan.calico` told to set DF on its tunnel packets (`df set`: Linux
/// leaves DF clear by default, and a router then fragments instead).
pub fn router_black_hole(lab: &Lab) -> Result<()> {
    let worker_1_subnet = plan::underlay_subnet(LegacyCni::CalicoCrossSubnet, 1);
    let bridge = plan::underlay_bridge(worker_1_subnet);
    in_ns(
        &lab.underlay_ns(),
        &["ip", "link", "set", &bridge, "mtu", "1400"],
    )?;
    let df = ["ip", "link", "set", "vxlan.calico", "type", "vxlan"];
    in_ns(
        &lab.node_ns("control-plane"),
        &[&df[..], &["df", "set"]].concat(),
    )?;
    Ok(())
}

/// A pod's stream from the control plane to worker-1's pod across the
/// router's black hole: 1450-byte segments, 1500 on the wire, refused at
/// the router, which tells the control plane (ICMP fragmentation-needed,
/// next hop 1400). The node learns the tunnel's path MTU but forwards its
/// pods' packets by the device's MTU (Linux ignores learnt path MTUs when
/// forwarding, `ip_forward_use_pmtu` 0): they are dropped on the node
/// (as NOT_SPECIFIED) without a word to the pod, and the stream stalls.
pub fn across_router_black_hole(lab: &Lab) -> Result<StreamReport> {
    let (from, to) = router_stream_ends(lab)?;
    router_stream(&from, &to)
}

/// The stream's ends: the control plane's pod, worker-1's.
fn router_stream_ends(lab: &Lab) -> Result<(Endpoint, Endpoint)> {
    Ok((
        lab.endpoint("control-plane/app-1")?,
        lab.endpoint("worker-1/app-1")?,
    ))
}

/// One stream across the router: 2 s, at most 1 MB/s.
fn router_stream(from: &Endpoint, to: &Endpoint) -> Result<StreamReport> {
    traffic::tcp_stream(from, to, Duration::from_secs(2), 1_000_000)
}

/// Streams across the router's black hole back to back until dropped,
/// the control plane's learnt path MTUs flushed before each: every stream
/// is refused at the router (and told) anew, then dropped on the node, so
/// a reading of any window while they run holds both.
pub struct StallingStreams {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StallingStreams {
    pub fn start(lab: &Lab) -> Result<StallingStreams> {
        let (from, to) = router_stream_ends(lab)?;
        let cp = lab.node_ns("control-plane");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                in_ns(&cp, &["ip", "route", "flush", "cache"]).unwrap();
                router_stream(&from, &to).unwrap();
            }
        });
        Ok(StallingStreams {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StallingStreams {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic there is the test's failure: say it, unless this
            // drop is part of another one's unwinding.
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the stalling streams failed");
            }
        }
    }
}

/// What an explanation of the stall's loss says of the path, with the
/// size an overlay packet may be: 1400 on the wire less VXLAN's 50.
pub const ROUTER_TOLD: &str =
    "ICMP fragmentation-needed about this path: overlay packets up to 1350 bytes fit";

/// What the gate says of a reading's JSON (a `crossover loss` of either
/// source) judged about `node`, its breaches explained by the reading's
/// drops and mtu rows: one line per breach. 5 sent are enough to judge
/// (the labs' windows are short).
pub fn gate_says(reading: &Value, node: &str) -> Vec<String> {
    let parse = |field: &str| reading[field].as_array().cloned().unwrap_or_default();
    let rows: Vec<LossRow> = parse("rows")
        .into_iter()
        .map(|r| serde_json::from_value(r).unwrap())
        .collect();
    let drops: Vec<DropRow> = parse("drops")
        .into_iter()
        .map(|d| serde_json::from_value(d).unwrap())
        .collect();
    let thresholds = Thresholds {
        min_sent: 5,
        ..Thresholds::default()
    };
    let mut decision = gate::judge(
        &thresholds,
        GateScope::Node,
        Some(node),
        &rows,
        Vec::new(),
        Vec::new(),
        String::new(),
    );
    Breach::explain(&mut decision.breaches, &drops, &rows);
    decision.breaches.iter().map(Breach::to_string).collect()
}
