//! What the lab is made of, kept in a JSON file so every `lab` command (and
//! a `lab down` after a crash) knows it. Namespace names are derived from
//! the lab's name, so `down` can also find what the file never recorded.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    fault::Fault,
    plan::{LegacyCni, Network},
};

pub const STATE_DIR: &str = "/run/crossover-lab";
/// Every namespace of every lab starts with this.
pub const NS_PREFIX: &str = "xo.";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    /// How the legacy side of every node is built (labs saved before the
    /// choice existed are Flannel labs).
    #[serde(default)]
    pub legacy: LegacyCni,
    pub nodes: Vec<NodeState>,
    #[serde(default)]
    pub faults: Vec<FaultState>,
    #[serde(default)]
    pub next_fault: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub control_plane: bool,
    /// Labelled `io.cilium.migration/cilium-default=true`: new pods get
    /// Cilium addresses.
    pub migrated: bool,
    pub cordoned: bool,
    pub pods: Vec<Pod>,
    /// Next free host number in each of the node's pod subnets: the lab's
    /// host-local IPAM. Addresses are not reused until the subnet wraps.
    pub next_host: [u8; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    /// Evicted by a drain, scheduled again afterwards.
    App,
    /// Survives the drain and keeps its legacy address until deleted.
    DaemonSet,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub kind: PodKind,
    pub network: Network,
    pub addr: Ipv4Addr,
    pub netns: String,
    /// Host end of the pod's veth (`veth…` on `cni0`, `cali…`, or `lxc…`).
    pub host_if: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultState {
    pub id: u32,
    pub fault: Fault,
}

impl LabState {
    pub fn file(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{name}.json"))
    }

    pub fn load(name: &str) -> Result<Self> {
        let path = Self::file(name);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no lab {name:?} ({} unreadable); `lab up` first",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state", path.display()))
    }

    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let path = Self::file(&self.name);
        // Write then rename: a crash leaves the old state or the new one.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn ns_prefix(name: &str) -> String {
        format!("{NS_PREFIX}{name}.")
    }

    pub fn underlay_ns(&self) -> String {
        format!("{}underlay", Self::ns_prefix(&self.name))
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("{}{node}", Self::ns_prefix(&self.name))
    }

    pub fn pod_ns(&self, node: &str, pod: &str) -> String {
        format!("{}{node}.{pod}", Self::ns_prefix(&self.name))
    }

    /// The bridge port in the underlay namespace that node `j` is plugged
    /// into; loss is injected there, on the wire between two nodes.
    pub fn underlay_port(j: usize) -> String {
        format!("port{j}")
    }

    /// Node `j`'s underlay address, as the lab's plan has it (two subnets
    /// in a CrossSubnet lab, one otherwise).
    pub fn underlay_addr(&self, j: usize) -> Ipv4Addr {
        super::plan::node_underlay(self.legacy, j).addr()
    }

    pub fn node_index(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .with_context(|| {
                let names: Vec<_> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                format!(
                    "no node {node:?} in lab {}; nodes: {}",
                    self.name,
                    names.join(", ")
                )
            })
    }

    /// A pod by `node/pod`.
    pub fn pod(&self, id: &str) -> Result<&Pod> {
        let Some((node, pod)) = id.split_once('/') else {
            bail!("pod {id:?} must be written node/pod");
        };
        let j = self.node_index(node)?;
        self.nodes[j]
            .pods
            .iter()
            .find(|p| p.name == pod)
            .with_context(|| {
                let names: Vec<_> = self.nodes[j].pods.iter().map(|p| p.name.as_str()).collect();
                format!("no pod {pod:?} on {node}; pods: {}", names.join(", "))
            })
    }
}

/// Lab names become part of namespace and file names.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 24
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("lab name {name:?}: use 1 to 24 of a-z, 0-9 and -");
    }
    Ok(())
}
