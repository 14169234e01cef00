//! The lab: a Kubernetes cluster in the middle of its migration to Cilium,
//! reduced to its datapath. Nodes are network namespaces on one underlay
//! bridge; each runs the legacy CNI's overlay (Flannel's or Calico's VXLAN,
//! or the AWS VPC CNI's native routes) and Cilium's side by side, with both
//! CNIs' masquerade rules; pods are namespaces on `veth`s (Flannel), `cali`s
//! (Calico), `eni`s (AWS) or `lxc`s (Cilium).
//! See `docs/lab.md` for the picture.
pub mod aws;
pub mod calico;
pub mod exec;
pub mod fault;
pub mod geneve;
pub mod ipip;
pub mod node;
pub mod plan;
pub mod pod;
pub mod state;
pub mod traffic;
pub mod tunl0;

use anyhow::{Result, bail};
use observer::shape::{ClusterShape, Node, NodePodCidr, Role};

use self::{
    exec::{in_ns, netns_list, run},
    state::{NodeState as NodeRecord, validate_name},
};
pub use self::{
    fault::Fault,
    plan::{LegacyCni, Network, Overlay},
    state::{LabState, NodeState, Pod, PodKind},
};

/// What `lab up` builds.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub name: String,
    pub nodes: usize,
    /// How many nodes have been through the migration (workers first, the
    /// control plane last, as the guide orders them).
    pub migrated: usize,
    /// App pods per node, besides the one DaemonSet pod every node has.
    pub pods: usize,
    /// The CNI the cluster migrates from: how legacy nodes are built.
    pub legacy: LegacyCni,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            name: "lab".into(),
            nodes: 3,
            migrated: 1,
            pods: 2,
            legacy: LegacyCni::Flannel,
        }
    }
}

/// A lab that exists. Dropping it leaves the lab in place unless it was
/// made with [`Lab::remove_on_drop`], as tests do.
pub struct Lab {
    state: LabState,
    remove_on_drop: bool,
}

impl Lab {
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        validate_name(&spec.name)?;
        if !(2..=plan::MAX_NODES).contains(&spec.nodes) {
            bail!(
                "--nodes {}: a lab has 2 to {} nodes",
                spec.nodes,
                plan::MAX_NODES
            );
        }
        if spec.migrated > spec.nodes {
            bail!(
                "--migrated {} is more than --nodes {}",
                spec.migrated,
                spec.nodes
            );
        }
        if spec.pods > 100 {
            bail!("--pods {}: at most 100 app pods per node", spec.pods);
        }
        if LabState::file(&spec.name).exists() || !leftovers(&spec.name)?.is_empty() {
            bail!("lab {0:?} already exists: `lab down {0}` first", spec.name);
        }
        let nodes = (0..spec.nodes)
            .map(|j| NodeRecord {
                name: if j == 0 {
                    "control-plane".into()
                } else {
                    format!("worker-{j}")
                },
                control_plane: j == 0,
                migrated: false,
                cordoned: false,
                pods: vec![],
                next_host: [2, 2],
            })
            .collect();
        let mut lab = Lab {
            state: LabState {
                name: spec.name.clone(),
                legacy: spec.legacy,
                nodes,
                faults: vec![],
                next_fault: 1,
            },
            remove_on_drop: false,
        };
        // Recorded first: a crash from here on leaves a lab `down` removes.
        lab.state.save()?;
        if let Err(e) = lab.build(spec) {
            let _ = Lab::down(&spec.name);
            return Err(e.context(format!("building lab {:?} (removed again)", spec.name)));
        }
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        run(&["ip", "netns", "add", &self.state.underlay_ns()])?;
        node::build_underlay(&self.state)?;
        for j in 0..spec.nodes {
            node::build_node(&self.state, j)?;
        }
        for j in self.migration_order().into_iter().take(spec.migrated) {
            self.state.nodes[j].migrated = true;
        }
        for j in 0..spec.nodes {
            let network = self.network_of(j);
            pod::create(&mut self.state, j, "ds", PodKind::DaemonSet, network)?;
            for p in 1..=spec.pods {
                pod::create(
                    &mut self.state,
                    j,
                    &format!("app-{p}"),
                    PodKind::App,
                    network,
                )?;
            }
        }
        self.state.save()?;
        self.resolve_underlay()
    }

    /// Workers first, the control plane last.
    pub fn migration_order(&self) -> Vec<usize> {
        let n = self.state.nodes.len();
        (1..n).chain(std::iter::once(0)).collect()
    }

    /// Resolves every node's underlay neighbours, so no first packet waits
    /// on ARP while crossover counts.
    fn resolve_underlay(&self) -> Result<()> {
        for (j, node) in self.state.nodes.iter().enumerate() {
            for k in (0..self.state.nodes.len()).filter(|&k| k != j) {
                in_ns(
                    &self.state.node_ns(&node.name),
                    &[
                        "ping",
                        "-c1",
                        "-W2",
                        "-q",
                        &self.state.underlay_addr(k).to_string(),
                    ],
                )?;
            }
        }
        Ok(())
    }

    pub fn open(name: &str) -> Result<Lab> {
        validate_name(name)?;
        Ok(Lab {
            state: LabState::load(name)?,
            remove_on_drop: false,
        })
    }

    /// Tests' labs go when the test ends, pass or fail.
    pub fn remove_on_drop(mut self) -> Self {
        self.remove_on_drop = true;
        self
    }

    /// Removes lab `name`: every namespace it made (found by name, so a
    /// crash halfway through `up` is no obstacle), the processes in them,
    /// and its state file. Removing what is not there is not an error.
    pub fn down(name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        let gone = leftovers(name)?;
        // Pods first: their veths go with them, before the node's bridge.
        let mut ordered = gone.clone();
        ordered.sort_by_key(|ns| std::cmp::Reverse(ns.matches('.').count()));
        for ns in &ordered {
            kill_and_delete_netns(ns)?;
        }
        match std::fs::remove_file(LabState::file(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(gone),
        }
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn node_ns(&self, node: &str) -> String {
        self.state.node_ns(node)
    }

    /// The namespace of the underlay bridge (named `underlay`).
    pub fn underlay_ns(&self) -> String {
        self.state.underlay_ns()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.state.nodes.iter()
    }

    /// A pod by `node/pod`.
    pub fn pod(&self, id: &str) -> Result<&Pod> {
        self.state.pod(id)
    }

    /// The network new pods on node `j` get.
    fn network_of(&self, j: usize) -> Network {
        if self.state.nodes[j].migrated {
            Network::Cilium
        } else {
            Network::Legacy
        }
    }

    /// Walks the guide's steps for one node, as far as a datapath sees them:
    /// cordon, drain (app pods go), label (new pods get Cilium addresses),
    /// restart the Cilium agent and reboot (nothing to do here: both
    /// overlays already run), restart DaemonSet pods if asked, uncordon (app
    /// pods come back, on Cilium, with new addresses). Without
    /// `restart_daemonsets` the node stays as the guide leaves it before
    /// that step: DaemonSet pods still on legacy addresses.
    pub fn migrate(&mut self, node: &str, restart_daemonsets: bool) -> Result<()> {
        let j = self.state.node_index(node)?;
        if self.state.nodes[j].migrated {
            bail!("{node} is already migrated");
        }
        self.state.nodes[j].cordoned = true;
        self.state.save()?;
        let apps: Vec<String> = self.state.nodes[j]
            .pods
            .iter()
            .filter(|p| p.kind == PodKind::App)
            .map(|p| p.name.clone())
            .collect();
        for name in &apps {
            pod::delete(&mut self.state, j, name)?;
        }
        self.state.nodes[j].migrated = true;
        self.state.save()?;
        if restart_daemonsets {
            self.restart_daemonset_pods(node)?;
        }
        for name in &apps {
            pod::create(&mut self.state, j, name, PodKind::App, Network::Cilium)?;
        }
        self.state.nodes[j].cordoned = false;
        self.state.save()
    }

    /// Deletes the node's DaemonSet pods; their replacements get addresses
    /// from the node's current network.
    pub fn restart_daemonset_pods(&mut self, node: &str) -> Result<()> {
        let j = self.state.node_index(node)?;
        let network = self.network_of(j);
        let ds: Vec<String> = self.state.nodes[j]
            .pods
            .iter()
            .filter(|p| p.kind == PodKind::DaemonSet)
            .map(|p| p.name.clone())
            .collect();
        for name in ds {
            pod::delete(&mut self.state, j, &name)?;
            pod::create(&mut self.state, j, &name, PodKind::DaemonSet, network)?;
        }
        self.state.save()
    }

    pub fn add_pod(&mut self, node: &str, name: &str, kind: PodKind) -> Result<Pod> {
        let j = self.state.node_index(node)?;
        let network = self.network_of(j);
        let pod = pod::create(&mut self.state, j, name, kind, network)?;
        self.state.save()?;
        Ok(pod)
    }

    /// A pod with a given address, e.g. the one the API server's cluster
    /// sim gave it.
    pub fn add_pod_at(
        &mut self,
        node: &str,
        name: &str,
        kind: PodKind,
        network: Network,
        addr: std::net::Ipv4Addr,
    ) -> Result<Pod> {
        let j = self.state.node_index(node)?;
        let pod = pod::create_at(&mut self.state, j, name, kind, network, addr)?;
        self.state.save()?;
        Ok(pod)
    }

    /// The pod holding `addr` on `node`, if any.
    pub fn pod_at(&self, node: &str, addr: std::net::Ipv4Addr) -> Option<&Pod> {
        let j = self.state.node_index(node).ok()?;
        self.state.nodes[j].pods.iter().find(|p| p.addr == addr)
    }

    pub fn delete_pod(&mut self, node: &str, name: &str) -> Result<()> {
        let j = self.state.node_index(node)?;
        pod::delete(&mut self.state, j, name)?;
        self.state.save()
    }

    /// The shape crossover on `node` is configured with.
    pub fn shape(&self, node: &str) -> Result<ClusterShape> {
        self.state.node_index(node)?;
        let tunnelled = self.state.legacy.tunnelled();
        let nodes = self
            .state
            .nodes
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let cilium = NodePodCidr {
                    role: Role::Cilium,
                    cidr: plan::pod_cidr(j, Network::Cilium),
                };
                let legacy = NodePodCidr {
                    role: Role::Legacy,
                    cidr: plan::pod_cidr(j, Network::Legacy),
                };
                // Natively routed legacy pods have no tunnel address and no
                // range: each is a /32 of `pods`.
                let (overlay_addrs, pod_cidrs) = if tunnelled {
                    (
                        vec![plan::flannel_addr(j), plan::cilium_host_addr(j)],
                        vec![legacy, cilium],
                    )
                } else {
                    (vec![plan::cilium_host_addr(j)], vec![cilium])
                };
                Node {
                    name: n.name.clone(),
                    underlay: self.state.underlay_addr(j),
                    overlay_addrs,
                    pod_cidrs,
                }
            })
            .collect();
        let mut shape = ClusterShape {
            local_node: Some(node.into()),
            nodes,
            ..ClusterShape::migration_defaults()
        };
        for network in shape.networks.iter_mut().filter(|n| n.role == Role::Legacy) {
            if tunnelled {
                // The legacy overlay's port (Flannel's 8472 is the
                // default), or IP-in-IP.
                network.encapsulation = self.state.legacy.encapsulation();
                // CrossSubnet: the tunnel only towards the other underlay
                // subnet.
                network.cross_subnet = self.state.legacy.cross_subnet();
            } else {
                network.cidrs.clear();
                network.encapsulation = observer::shape::Encapsulation::Native;
            }
        }
        if !tunnelled {
            shape.pods = self
                .state
                .nodes
                .iter()
                .flat_map(|n| &n.pods)
                .filter(|p| p.network == Network::Legacy)
                .map(|p| observer::shape::PodAddr {
                    addr: p.addr,
                    node: p.node.clone(),
                    role: Role::Legacy,
                })
                .collect();
        }
        // The crafted IP-in-IP of `ipip::send` carries legacy pods, as
        // Calico's tunl0 would beside the legacy VXLAN here (in an IPIP
        // lab the legacy network is that already).
        if !self.state.legacy.ipip() {
            shape.networks.push(observer::shape::Network {
                role: Role::Legacy,
                cidrs: vec![],
                encapsulation: observer::shape::Encapsulation::Ipip,
                cross_subnet: false,
            });
        }
        Ok(shape)
    }

    /// Injects a fault; returns its id for [`Lab::clear`] and [`Lab::drops`].
    pub fn inject(&mut self, fault: Fault) -> Result<u32> {
        let id = self.state.next_fault.max(1);
        fault::apply(&self.state, id, &fault)?;
        self.state.next_fault = id + 1;
        self.state.faults.push(state::FaultState { id, fault });
        self.state.save()?;
        Ok(id)
    }

    pub fn clear(&mut self, id: u32) -> Result<()> {
        let Some(at) = self.state.faults.iter().position(|f| f.id == id) else {
            bail!("no fault {id} in lab {}", self.state.name);
        };
        fault::remove(&self.state, id, &self.state.faults[at].fault)?;
        self.state.faults.remove(at);
        self.state.save()
    }

    pub fn clear_all(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.state.faults.iter().map(|f| f.id).collect();
        ids.into_iter().try_for_each(|id| self.clear(id))
    }

    /// Packets fault `id` dropped so far: a loss fault on the wire, a
    /// firewall fault inside its node.
    pub fn drops(&self, id: u32) -> Result<u64> {
        let Some(f) = self.state.faults.iter().find(|f| f.id == id) else {
            bail!("no fault {id} in lab {}", self.state.name);
        };
        fault::drops(&self.state, id, &f.fault)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.remove_on_drop
            && let Err(e) = Lab::down(&self.state.name)
        {
            eprintln!("removing lab {}: {e:#}", self.state.name);
        }
    }
}

/// Namespaces of lab `name` that exist now.
fn leftovers(name: &str) -> Result<Vec<String>> {
    let prefix = LabState::ns_prefix(name);
    Ok(netns_list()?
        .into_iter()
        .filter(|ns| ns.starts_with(&prefix))
        .collect())
}

/// Kills what runs in `ns` (traffic generators started by `lab traffic`)
/// and deletes it. Threads of this process that entered it are not
/// processes of their own and are left alone.
pub(crate) fn kill_and_delete_netns(ns: &str) -> Result<()> {
    if !netns_list()?.iter().any(|n| n == ns) {
        return Ok(());
    }
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-KILL", pid]);
        }
    }
    run(&["ip", "netns", "del", ns]).map(drop)
}
