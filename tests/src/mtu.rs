//! The MTU black hole the large probes' tests inject, and how its naming
//! reads, whichever source (the agents, Prometheus) the rows came from.
use serde_json::Value;

use crate::lab::{Fault, Overlay};

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
