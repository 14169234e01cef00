//! `crossover agent`: what runs on every node (the DaemonSet). It attaches
//! the programs, follows interfaces as pods come and go, follows the
//! cluster through the API (or a config file), reads its own counters on
//! aligned ticks into a short ring (its half of every window; it never
//! reads its peers), and serves it all as Prometheus metrics and a
//! versioned JSON API.
pub mod api;
pub mod auth;
mod hook_events;
pub mod metrics;
mod migration;
mod probing;
mod process;
mod routes;
mod sampler;
pub mod view;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::Duration,
};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

pub use routes::router;

use crate::{
    Error, Result,
    cluster::{Cluster, ClusterOptions, derive::ShapeOverrides},
    connections::{self, Connection},
    conntrack,
    datapath::{AttachMode, FlowRecord, Hook, LoadOptions, Observer, Selection, Session, lock},
    loss::{
        LossRow,
        kept::{Keeper, KeptReport},
        reading::{Answerer, NodeReading, Request},
        ring::{Ring, Tick, Unservable},
    },
};
use view::View;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Cluster shape with `local_node` set (JSON, see docs/shape.md), for
    /// running without Kubernetes. Without it the agent reads the cluster.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kubeconfig file; default: in-cluster credentials, then $KUBECONFIG.
    /// With --config, used only to check tokens (--auth on).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME", required_unless_present = "config")]
    pub node_name: Option<String>,
    /// Namespace of the agent DaemonSet's pods, the peers.
    #[arg(long, env = "POD_NAMESPACE", default_value = "crossover")]
    pub namespace: String,
    /// Label selector of the agent pods (in --namespace): the peers whose
    /// overlay addresses are probed.
    #[arg(long, default_value = "app.kubernetes.io/name=crossover-agent")]
    pub agent_selector: String,
    /// Label selector of the probe pods (any namespace): probed on the
    /// pod networks.
    #[arg(long, default_value = "app.kubernetes.io/name=crossover-probe")]
    pub probe_selector: String,
    /// The migration's name (`crossover migrate --name`): its state
    /// ConfigMap in --namespace, whose progress is exported as
    /// `crossover_migration_*` metrics.
    #[arg(long, default_value = "crossover-migration")]
    pub migration_name: String,
    /// Namespace of Cilium and its `cilium-config`.
    #[arg(long, default_value = "kube-system")]
    pub cilium_namespace: String,
    #[command(flatten)]
    pub overrides: ShapeOverrides,
    /// The underlay and any other interface the name does not tell, as
    /// NAME=HOOK. Overlay devices and pod veths are followed by name; with
    /// Kubernetes the underlay is the interface holding the node's
    /// InternalIP.
    #[arg(long = "iface", value_parser = crate::datapath::parse_iface)]
    pub ifaces: Vec<(String, Hook)>,
    /// GLOB=HOOK (or GLOB=none) tried before the shape file's and the
    /// default rules for following interfaces, e.g. 'gke*=pod'. Repeatable;
    /// the rules in force are printed at start.
    #[arg(long = "follow-pattern", value_parser = crate::iface::parse_rule)]
    pub follow_patterns: Vec<crate::iface::Rule>,
    /// Address for /metrics, /healthz, /readyz and /api/v1: ADDR:PORT, or
    /// node:PORT for this node's address only (--host-ip, else the node's
    /// underlay address: its InternalIP with Kubernetes), not every
    /// address of the host.
    #[arg(long, default_value = "node:9190", value_parser = parse_listen)]
    pub listen: Listen,
    /// This node's address, for --listen node:PORT (the DaemonSet passes
    /// the downward API's status.hostIP).
    #[arg(long, env = "HOST_IP")]
    pub host_ip: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub auth: auth::AuthArgs,
    /// Length of this agent's own loss window (`/api/v1/loss`); readers
    /// choose theirs, up to this plus two ticks back. At most 600 ticks of
    /// --sample-interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub window: Duration,
    /// Port of the probe responders: this agent's own (host network, every
    /// address) and the probe pods'.
    #[arg(long, default_value_t = 9191)]
    pub probe_port: u16,
    /// Probes per second to each target of a node under migration, UDP,
    /// TCP and large (the route's MTU, DF set) each, and the most any
    /// target is probed at; 0 turns probing (and the responder) off.
    #[arg(long, default_value_t = crate::probe::mesh::DEFAULT_RATE)]
    pub probe_rate: f64,
    /// Probe packets per second this node sends, all targets together (a
    /// UDP probe is 1 packet, a TCP probe 3, a large one 1): the node under
    /// migration steadily, the rest of the cluster in rotation, a tenth
    /// kept for MTU ladders (docs/agent.md).
    #[arg(long, default_value_t = crate::probe::mesh::DEFAULT_BUDGET,
          value_parser = probing::parse_budget)]
    pub probe_budget: f64,
    /// The tick: counters are read at every multiple of it on the wall
    /// clock, the same instants on every node. Every agent of a cluster
    /// must use the same.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_interval: Duration,
    /// The second read of each tick comes this long after the first: a
    /// packet in flight (plus the nodes' clock skew) for less than this is
    /// never counted as lost (docs/agent.md, "Windows").
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub reading_guard: Duration,
    /// Named network namespace (`ip netns`) of the interfaces.
    #[arg(long)]
    pub netns: Option<String>,
    /// How programs are attached: TCX links where the kernel has them
    /// (6.6+), else netlink clsact; or force one.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Capacity of the flow table (1 to 16,777,216); new flows beyond it
    /// are refused and counted (flow_map_full).
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_FLOW_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..=crate::datapath::MAX_FLOW_CAPACITY as i64))]
    pub flow_capacity: u32,
    /// Capacity of the address table (ADDRS: networks, node ranges, node
    /// addresses). Default: twice what the shape at start needs, at least
    /// 16,384.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub addr_capacity: Option<u32>,
    /// ADDR_BLOCKS entries (24 bytes each): the cluster's pod ranges cut
    /// into their nodes' blocks, so a new flow's addresses are classified
    /// in constant time at any cluster size. Ranges that do not fit are
    /// left to the address trie and named at start; 0 leaves all to it.
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_ADDR_BLOCK_CAPACITY,
          value_parser = clap::value_parser!(u32).range(0..=crate::datapath::MAX_ADDR_BLOCK_CAPACITY as i64))]
    pub addr_block_capacity: u32,
    /// Pods' /32 entries in the address table, for pods whose addresses
    /// no network range covers (AWS VPC CNI: pods in the nodes' subnet,
    /// listed from the Pods or the shape file's `pods`). Pods beyond it
    /// are left out, classified as outside the cluster, and counted
    /// (crossover_pod_addrs{state="refused"}, /api/v1/status).
    #[arg(long, default_value_t = crate::datapath::DEFAULT_POD_ADDR_CAPACITY)]
    pub pod_addr_capacity: u32,
    /// PEER_STATS slots: (peer node, overlay, direction, network pair)
    /// keys in use counted without a hash lookup, 64 bytes each per CPU.
    /// Keys beyond it are still counted (PEERS hash), and shown as
    /// crossover_peer_keys_without_slot.
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_PEER_SLOT_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..=crate::datapath::MAX_PEER_SLOT_CAPACITY as i64))]
    pub peer_slot_capacity: u32,
    /// bpffs directory (e.g. /sys/fs/bpf/crossover) to pin maps and TCX
    /// links in: a restarted agent counts on with no gap (docs/restarts.md).
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// With --pin-path: on SIGTERM remove links and pins instead of
    /// leaving them for the next agent (uninstalling).
    #[arg(long, requires = "pin_path")]
    pub detach_on_exit: bool,
    /// In a cluster of up to this many nodes /metrics has a series per
    /// peer in every per-peer family; past it, per node under migration,
    /// every other peer summed into peer_node="*" (which rules cannot join
    /// with the peer's half: docs/metrics.md). 8 series a peer at most.
    #[arg(long, default_value_t = metrics::PEER_DETAIL_NODES)]
    pub metrics_peer_detail: usize,
    /// Do not count the kernel's drops of cluster traffic by reason (the
    /// skb:kfree_skb program; kernels 5.17+, tracefs and BTF needed).
    #[arg(long)]
    pub no_drop_reasons: bool,
    #[command(flatten)]
    pub ageing: crate::datapath::AgeingPolicy,
}

use crate::duration::parse_duration;

/// Where the agent listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// This node's own address, this port.
    Node(u16),
    Addr(SocketAddr),
}

impl Listen {
    pub fn port(&self) -> u16 {
        match self {
            Listen::Node(port) => *port,
            Listen::Addr(addr) => addr.port(),
        }
    }

    /// The address to bind, and where it came from (for the log).
    fn resolve(
        self,
        host_ip: Option<std::net::IpAddr>,
        underlay: std::net::Ipv4Addr,
    ) -> (SocketAddr, &'static str) {
        match (self, host_ip) {
            (Listen::Addr(addr), _) => (addr, "--listen"),
            (Listen::Node(port), Some(ip)) => (SocketAddr::new(ip, port), "--host-ip"),
            (Listen::Node(port), None) => (
                SocketAddr::new(underlay.into(), port),
                "this node's underlay address",
            ),
        }
    }
}

fn parse_listen(s: &str) -> std::result::Result<Listen, String> {
    match s.strip_prefix("node:") {
        Some(port) => port
            .parse()
            .map(Listen::Node)
            .map_err(|_| format!("{s:?}: node:PORT needs a port number")),
        None => s.parse().map(Listen::Addr).map_err(|_| {
            format!("{s:?}: expected ADDR:PORT (0.0.0.0:9190 for every address) or node:PORT")
        }),
    }
}

/// What the HTTP handlers and the background tasks share.
pub struct State {
    pub node: String,
    view: RwLock<Arc<View>>,
    observer: Arc<Mutex<Observer>>,
    netns: Option<String>,
    cluster: Option<Arc<Cluster>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// This node's reads, one per tick, and the newest tick's number.
    ring: Mutex<Ring>,
    newest_tick: tokio::sync::watch::Sender<u64>,
    /// With pins: every tick also kept beside the counters, and what this
    /// agent found of its predecessor's (loss/kept.rs).
    keeper: Option<Mutex<Keeper>>,
    kept: Option<KeptReport>,
    window: Duration,
    sample_duration: Mutex<Duration>,
    /// The sampler's last reading, and how old it may be to be served.
    reading: Mutex<Option<Arc<sampler::Reading>>>,
    reading_max_age: Duration,
    /// `--metrics-peer-detail`.
    peer_detail_nodes: usize,
    probing: Option<probing::Probing>,
    /// Woken by the sampler when the flow table refused new flows since
    /// its last reading: the ageing sweep comes sooner.
    table_full: tokio::sync::Notify,
    /// `flow_map_full` at the last reading.
    refused_flows: std::sync::atomic::AtomicU64,
    /// NAT mappings of connections conntrack destroyed, for joins after
    /// they are gone from its table; `None` without ctnetlink.
    departed_nat: Option<Mutex<conntrack::DepartedNat>>,
    /// Flow and connection reads in progress, at most
    /// [`routes::FLOW_READERS`].
    flow_reads: tokio::sync::Semaphore,
    /// Bearer token checks; `None` when auth is off.
    auth: Option<auth::Auth>,
}

impl State {
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_reading(&self, reading: sampler::Reading) {
        *self.reading.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(reading));
    }

    /// The sampler's last reading if it is recent enough.
    fn fresh_reading(&self) -> Option<Arc<sampler::Reading>> {
        self.reading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|r| r.taken.elapsed() <= self.reading_max_age)
    }

    fn set_view(&self, view: View) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        self.follow_probes();
    }

    /// Probe targets from the current view.
    fn follow_probes(&self) {
        if let Some(probing) = &self.probing {
            probing.follow(&self.view());
        }
    }

    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn count(&self, err: &Error) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(err.metric_label()).or_default() += 1;
    }

    fn push_tick(&self, tick: Tick) {
        if let Some(keeper) = &self.keeper {
            // What the process alone counts goes with the tick.
            let expired = lock(&self.observer).expired_handshakes();
            let kept = keeper
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keep(&tick, &expired);
            if let Err(err) = kept {
                self.count(&err);
            }
        }
        let k = tick.k;
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tick);
        self.newest_tick.send_replace(k);
    }

    /// This node's half of the window `request` asks for. `Err` when the
    /// window's end tick is not read yet.
    pub fn reading(&self, request: &Request) -> std::result::Result<NodeReading, Unservable> {
        // Taken before the ring: the observer's lock is never waited for
        // while holding the ring's.
        let blind = crate::loss::blind::BlindHooks::of(lock(&self.observer).order());
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let interval_ms = ring.interval.as_millis().max(1) as u64;
        let (from, to) = request.ticks(interval_ms);
        let (start, end) = ring.window(from, to)?;
        let view = self.view();
        let name = |addr| view.is_node(addr).then(|| view.node_name(addr));
        let answerer = Answerer {
            node: &self.node,
            underlay: view
                .local()
                .map_or(std::net::Ipv4Addr::UNSPECIFIED, |n| n.underlay),
            guard_ms: ring.guard.as_millis() as u64,
            interval_ms,
            name: &name,
            probes: self.probe_rows(),
            blind,
        };
        Ok(answerer.answer(request, start, end))
    }

    /// The newest tick's number, waited for up to `wait` when it is not
    /// `k` yet.
    pub async fn wait_tick(&self, k: u64, wait: Duration) {
        let mut ticks = self.newest_tick.subscribe();
        let _ = tokio::time::timeout(wait, ticks.wait_for(|&newest| newest >= k)).await;
    }

    pub fn interval(&self) -> Duration {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).interval
    }

    /// How far the newest tick's reads strayed from their instants.
    pub fn tick_lateness(&self) -> Duration {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let ms = ring
            .newest()
            .map_or(0, |t| t.lateness_ms(ring.interval, ring.guard));
        Duration::from_millis(ms)
    }

    pub fn oldest_tick_ms(&self) -> u64 {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.oldest()
            .map_or(0, |t| t.k * ring.interval.as_millis() as u64)
    }

    pub fn newest_tick_ms(&self) -> u64 {
        *self.newest_tick.borrow() * self.interval().as_millis() as u64
    }

    fn probe_rows(&self) -> Vec<LossRow> {
        self.probing
            .iter()
            .flat_map(|p| p.loss(&self.node))
            .collect()
    }

    /// This agent's own signals (TCP, probes) over its window, every peer.
    pub fn loss(&self) -> api::LossReport {
        // The window ending at the newest tick, every peer, every row.
        let request = Request {
            at_ms: self.newest_tick_ms(),
            window_ms: self.window.as_millis() as u64,
            nodes: vec![self.node.clone()],
            groups: None,
            group: None,
            top: 0,
            min_sent: 0,
        };
        let (rows, seconds) = match self.reading(&request) {
            Ok(r) => (r.local, r.to_ms.saturating_sub(r.from_ms) as f64 / 1000.0),
            Err(_) => (self.probe_rows(), 0.0),
        };
        api::LossReport {
            version: 1,
            node: self.node.clone(),
            window_seconds: seconds,
            rows,
        }
    }

    pub fn sample_duration(&self) -> Duration {
        *self
            .sample_duration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn set_sample_duration(&self, took: Duration) {
        *self
            .sample_duration
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = took;
    }

    fn peers_report(&self) -> Result<api::PeersReport> {
        let (peers, blind) = {
            let observer = lock(&self.observer);
            let blind = crate::loss::blind::BlindHooks::of(observer.order());
            (observer.peers()?, blind)
        };
        let underlay = self
            .view()
            .local()
            .map(|n| n.underlay)
            .ok_or_else(|| Error::Agent {
                agent: self.node.clone(),
                reason: "this node is not in the cluster shape yet".into(),
            })?;
        Ok(api::PeersReport {
            version: 1,
            node: self.node.clone(),
            underlay,
            taken_ns: crate::datapath::monotonic_ns(),
            peers,
            blind,
        })
    }

    /// This node's NAT table, and the mappings of connections conntrack
    /// destroyed since (kept while their flows may be in the flow table).
    /// Without conntrack (no NAT module, no privilege) it is empty and the
    /// error is counted: connections are then reported unjoined across
    /// SNAT, and ageing keeps each flow on its own.
    fn nat_entries(&self) -> Result<Vec<conntrack::NatEntry>> {
        let nat = {
            let _ns = self.netns.as_deref().map(crate::netns::enter).transpose()?;
            conntrack::nat_entries()
        };
        let mut entries = nat.map(|d| d.entries).unwrap_or_else(|err| {
            self.count(&err);
            Vec::new()
        });
        if let Some(departed) = self.drained_departed_nat() {
            entries.extend(departed.entries().copied());
        }
        Ok(entries)
    }

    /// The departed-NAT log (when there is one) with conntrack's destroy
    /// announcements queued since the last call taken in.
    fn drained_departed_nat(&self) -> Option<MutexGuard<'_, conntrack::DepartedNat>> {
        let mut log = self
            .departed_nat
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Err(err) = log.drain(crate::datapath::monotonic_ns()) {
            self.count(&err);
        }
        Some(log)
    }

    /// Takes conntrack's destroy announcements queued since the last call.
    fn drain_departed_nat(&self) {
        drop(self.drained_departed_nat());
    }

    /// What the departed-NAT log kept and missed, if there is one.
    pub fn departed_nat_stats(&self) -> Option<conntrack::DepartedStats> {
        self.departed_nat
            .as_ref()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).stats())
    }

    /// `flows` joined into connections with this node's NAT table.
    fn connections(&self, flows: &[FlowRecord]) -> Result<Vec<Connection>> {
        Ok(connections::join_now(flows, &self.nat_entries()?))
    }

    /// One ageing sweep, joined across SNAT with this node's NAT table.
    fn age_flows(&self, policy: &crate::datapath::AgeingPolicy) -> Result<()> {
        // The NAT table is read only if the sweep finds something idle.
        let nat = || {
            self.nat_entries().unwrap_or_else(|err| {
                self.count(&err);
                Vec::new()
            })
        };
        lock(&self.observer).age_flows_with(crate::datapath::monotonic_ns(), policy, nat)?;
        Ok(())
    }

    /// Why the agent is not ready, if it is not.
    fn unready(&self) -> Option<String> {
        let observer = lock(&self.observer);
        if !observer.attached().any(|(_, hook)| hook == Hook::Underlay) {
            return Some("not attached to an underlay interface".into());
        }
        if let Some(blind) = blind_underlay(observer.order()) {
            return Some(blind);
        }
        if let Some(cluster) = &self.cluster
            && !cluster.synced()
        {
            return Some("Kubernetes API not synced".into());
        }
        None
    }
}

/// Why this node's readings cannot be trusted, when a program runs before
/// ours on an underlay hook (docs/hooks.md): what it drops or redirects
/// never reaches our counters, so a reading would report as delivered, or
/// as never sent, what the wire never saw. `None` when every underlay hook
/// sees first.
pub(crate) fn blind_underlay(order: &[crate::datapath::HookOrder]) -> Option<String> {
    let blind: Vec<String> = order
        .iter()
        .filter(|o| o.hook == Hook::Underlay && o.placement == crate::datapath::Placement::Blind)
        .map(|o| format!("{} {} behind programs {:?}", o.iface, o.direction, o.ahead))
        .collect();
    (!blind.is_empty()).then(|| {
        format!(
            "underlay hook blind ({}): another program runs before crossover's and may drop or redirect what it never sees; no reading is served from here",
            blind.join(", ")
        )
    })
}

/// Where the cluster's shape comes from.
enum Source {
    File(crate::shape::ClusterShape),
    Kube(Arc<Cluster>),
}

async fn open_source(args: &AgentArgs) -> Result<(String, Source)> {
    if args.config.is_some() && args.kubeconfig.is_some() && args.auth.mode != auth::Mode::On {
        return Err(Error::Shape(
            "--kubeconfig with --config is only for checking tokens: add --auth on".into(),
        ));
    }
    if let Some(config) = &args.config {
        let shape = crate::shape::load(Some(config.as_path()))?;
        let node = shape.local_node.clone().ok_or_else(|| {
            Error::Shape(format!(
                "{}: local_node must name this node",
                config.display()
            ))
        })?;
        return Ok((node, Source::File(shape)));
    }
    let node = args.node_name.clone().ok_or_else(|| Error::Kube {
        context: "--node-name".into(),
        reason: "required with Kubernetes (set NODE_NAME from spec.nodeName)".into(),
    })?;
    let cluster = Cluster::start(ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        node_name: node.clone(),
        cilium_namespace: args.cilium_namespace.clone(),
        agent_namespace: args.namespace.clone(),
        agent_selector: args.agent_selector.clone(),
        probe_selector: args.probe_selector.clone(),
        migration_name: args.migration_name.clone(),
        overrides: args.overrides.clone(),
    })
    .await?;
    eprintln!("crossover: waiting for the Kubernetes API to list nodes and pods");
    cluster.wait_synced().await;
    Ok((node, Source::Kube(Arc::new(cluster))))
}

pub async fn run(args: AgentArgs) -> Result<()> {
    // Before anything is loaded or attached.
    check_ticks(args.sample_interval, args.reading_guard, args.window)?;
    let (node, source) = open_source(&args).await?;
    let (shape, cluster) = match source {
        Source::File(shape) => (shape, None),
        Source::Kube(cluster) => {
            let derived = cluster.derive();
            for warning in &derived.warnings {
                eprintln!("crossover: warning: {warning}");
            }
            (derived.shape, Some(cluster))
        }
    };
    let underlay = shape
        .local()
        .map(|n| n.underlay)
        .ok_or_else(|| Error::Shape(format!("node {node:?} is not in the cluster shape")))?;
    let mut explicit = args.ifaces.clone();
    if !explicit.iter().any(|(_, h)| *h == Hook::Underlay) {
        let _ns = args.netns.as_deref().map(crate::netns::enter).transpose()?;
        let iface = crate::datapath::interface_with(underlay).ok_or_else(|| {
            Error::Shape(format!(
                "no interface holds this node's underlay address {underlay}: pass --iface NAME=underlay"
            ))
        })?;
        explicit.push((iface, Hook::Underlay));
    }
    let options = LoadOptions {
        flow_capacity: args.flow_capacity,
        addr_capacity: shape.addr_capacity(args.addr_capacity)?,
        addr_block_capacity: args.addr_block_capacity,
        pod_addr_capacity: args.pod_addr_capacity,
        peer_slot_capacity: args.peer_slot_capacity,
        attach_mode: args.attach_mode,
        netns: args.netns.clone(),
        pin_path: args.pin_path.clone(),
        // Readers of this API (the driver, `crossover loss`, Prometheus)
        // connect to this port on every node: never judged.
        control_port: args.listen.port(),
        ..LoadOptions::default()
    };
    let mut session = Session::open(
        options,
        &shape,
        Selection {
            explicit,
            follow: Some(shape.interface_rules(&args.follow_patterns)?),
        },
    )?;
    eprintln!(
        "crossover: {}",
        session.observer().block_summary().describe()
    );
    let view = View::from_shape(shape);
    let capacity = Ring::capacity_for(args.window, args.sample_interval);
    let mut ring = Ring::new(args.sample_interval, args.reading_guard, capacity);
    let (keeper, kept) = match kept_ticks(&mut session.observer(), &mut ring) {
        Ok(Some((keeper, report))) => (Some(Mutex::new(keeper)), Some(report)),
        Ok(None) => (None, None),
        Err(err) => {
            eprintln!("crossover: warning: ticks are not kept across restarts: {err}");
            (None, Some(KeptReport::unavailable(err.to_string())))
        }
    };
    let probing = if args.probe_rate <= 0.0 {
        None
    } else if args.netns.is_some() {
        // Probe sockets are made on the runtime's threads, which stay in
        // the agent's own namespace.
        eprintln!("crossover: warning: no probes with --netns; run the agent inside the namespace");
        None
    } else if !(args.probe_rate.is_finite() && args.probe_rate <= 1000.0) {
        return Err(Error::Probe(format!(
            "--probe-rate {}: expected 0 (off) to 1000 probes per second",
            args.probe_rate
        )));
    } else {
        Some(
            probing::Probing::start(
                node.clone(),
                args.probe_port,
                args.probe_rate,
                args.probe_budget,
                args.window,
            )
            .await?,
        )
    };
    let auth = auth::Auth::start(&args.auth, cluster.is_some(), args.kubeconfig.as_ref()).await?;
    if !args.no_drop_reasons {
        // Without drop reasons every other signal still stands: said, and
        // counted as an error, not fatal.
        match lock(&session.observer).enable_drops() {
            Ok(()) => eprintln!("crossover: counting the kernel's drops by reason (skb:kfree_skb)"),
            Err(err) => eprintln!("crossover: warning: no drop reasons: {err}"),
        }
    }
    let state = Arc::new(State {
        node,
        view: RwLock::new(Arc::new(view)),
        observer: session.observer.clone(),
        netns: args.netns.clone(),
        cluster: cluster.clone(),
        errors: Mutex::new(Error::METRIC_LABELS.into_iter().map(|r| (r, 0)).collect()),
        newest_tick: tokio::sync::watch::Sender::new(ring.newest().map_or(0, |t| t.k)),
        ring: Mutex::new(ring),
        keeper,
        kept,
        window: args.window,
        sample_duration: Mutex::new(Duration::ZERO),
        reading: Mutex::new(None),
        // A sampler that fell behind (or stopped) is not served from.
        reading_max_age: args.sample_interval * 3,
        peer_detail_nodes: args.metrics_peer_detail,
        probing,
        table_full: tokio::sync::Notify::new(),
        refused_flows: std::sync::atomic::AtomicU64::new(0),
        departed_nat: departed_nat(args.netns.as_deref(), &args.ageing),
        flow_reads: tokio::sync::Semaphore::new(routes::FLOW_READERS),
        auth,
    });
    let mut tasks = Vec::new();
    // Every order check's result, for the Events on the Node (Kubernetes
    // only): the newest kept, never queued.
    let (orders, orders_rx) = tokio::sync::watch::channel(Vec::new());
    if let Some(cluster) = cluster {
        tasks.push(tokio::spawn(hook_events::follow(
            cluster.clone(),
            orders_rx,
        )));
        view::rebuild(&state, &cluster);
        tasks.push(tokio::spawn(view::follow_cluster(state.clone(), cluster)));
    } else {
        // A shape file's view never changes: its probe targets are set once.
        state.follow_probes();
    }
    sampler::spawn(state.clone(), args.sample_interval, args.reading_guard)?;
    session.keep_clear_of(crate::datapath::ReadTimes {
        interval: args.sample_interval,
        guard: args.reading_guard,
    });
    if !args.ageing.interval.is_zero() {
        tasks.push(tokio::spawn(age_flows(state.clone(), args.ageing.clone())));
    }

    let (listen, from) = args.listen.resolve(args.host_ip, underlay);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("listening on {listen} ({from})"), e))?;
    eprintln!(
        "crossover: agent for {} on {listen} ({from}), observing {}",
        state.node,
        session.attached_list()
    );
    let pods = lock(&state.observer).pod_addrs();
    if pods.in_table + pods.refused > 0 {
        eprintln!(
            "crossover: {} pod addresses as /32 entries (--pod-addr-capacity {}), {} left out",
            pods.in_table, pods.capacity, pods.refused
        );
    }
    eprintln!("crossover: {}", auth::Auth::describe(state.auth.as_ref()));
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut server = Box::pin(axum::serve(listener, router(state)).into_future());
    let mut order_check = tokio::time::interval(crate::datapath::ORDER_CHECK);
    let result = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            served = &mut server => break served.map_err(|e| Error::io("serving HTTP", e)),
            followed = session.follow_links() => if let Err(err) = followed { break Err(err) },
            _ = order_check.tick() => if let Err(err) = session.keep_order().await { break Err(err) },
        }
        let observer = session.observer();
        orders.send_if_modified(|last| {
            let changed = last.as_slice() != observer.order();
            if changed {
                *last = observer.order().to_vec();
            }
            changed
        });
    };
    for task in tasks {
        task.abort();
    }
    // Open connections may still hold the state: detach explicitly (with
    // pins: leave links and maps to the next agent, see Observer::exit).
    drop(server);
    let exited = session.observer().exit(args.detach_on_exit);
    drop(session);
    eprintln!("crossover: exited");
    result.and(exited)
}

/// With pins, the keeper of this agent's ticks, and the ticks its
/// predecessor kept put into `ring`: a window that began before the
/// restart still starts at its own tick (loss/kept.rs).
fn kept_ticks(observer: &mut Observer, ring: &mut Ring) -> Result<Option<(Keeper, KeptReport)>> {
    // A tick of every counter the per-peer maps can hold fits a slot.
    let options = observer.options();
    let keys = options.peer_capacity as usize + options.peer_slot_capacity as usize;
    let slots = ring.capacity() as u32;
    let Some((pages, found)) =
        observer.pinned_pages(crate::loss::kept::MAP, slots, Keeper::max_bytes(keys))?
    else {
        return Ok(None);
    };
    let interval_ms = ring.interval.as_millis() as u64;
    let basis = crate::loss::kept::Basis {
        interval_ms,
        guard_ms: ring.guard.as_millis() as u64,
        counters: observer.counter_ids()?,
    };
    let keeper = Keeper::new(pages, basis);
    let now = crate::loss::ring::unix_ms(std::time::SystemTime::now()) / interval_ms;
    let (ticks, expired, report) = keeper.adopt(found, now, u64::from(slots))?;
    for tick in ticks {
        ring.push(tick);
    }
    // Handshakes the last process expired unanswered: counted on, as the
    // kernel's counts are.
    observer.adopt_expired_handshakes(&expired);
    eprintln!("crossover: {}", report.summary());
    Ok(Some((keeper, report)))
}

/// Ticks a window may span: 10 minutes at the default 1 s tick. The ring
/// and the ticks kept beside the pins grow with it (docs/restarts.md).
const MAX_WINDOW_TICKS: u32 = 600;

/// The tick and its guard, as readers rely on them: whole milliseconds
/// (ticks are numbered in ms on every node), and a guard that leaves the
/// tick time to read twice.
fn check_ticks(interval: Duration, guard: Duration, window: Duration) -> Result<()> {
    let bad = |reason: String| Err(Error::Shape(reason));
    // The ring (and the ticks kept beside the pins) holds a tick of every
    // counter per tick of the window.
    if window > interval * MAX_WINDOW_TICKS {
        return bad(format!(
            "--window {window:?}: at most {MAX_WINDOW_TICKS} ticks of --sample-interval ({:?})",
            interval * MAX_WINDOW_TICKS
        ));
    }
    if interval < Duration::from_millis(100) || !interval.subsec_nanos().is_multiple_of(1_000_000) {
        return bad(format!(
            "--sample-interval {interval:?}: expected whole milliseconds, at least 100ms"
        ));
    }
    if guard.is_zero() || guard * 2 >= interval || !guard.subsec_nanos().is_multiple_of(1_000_000) {
        return bad(format!(
            "--reading-guard {guard:?}: expected whole milliseconds, more than 0 and under half of --sample-interval ({interval:?})"
        ));
    }
    Ok(())
}

/// Sweeps brought forward by a full flow table come at most this often.
const EARLIEST_SWEEP: Duration = Duration::from_secs(5);

/// Flow ageing (datapath/ageing.rs): a sweep every interval, off the async
/// workers, or sooner when the sampler sees the flow table refuse flows.
/// The departed-NAT log, subscribed in the agent's network namespace;
/// mappings kept as long as a departed connection's flows can stay in the
/// flow table (the longest idle limit and one sweep).
fn departed_nat(
    netns: Option<&str>,
    ageing: &crate::datapath::AgeingPolicy,
) -> Option<Mutex<conntrack::DepartedNat>> {
    let retention = ageing
        .tcp_established
        .max(ageing.tcp_closed)
        .max(ageing.other)
        + ageing.interval;
    let subscribed = netns
        .map(crate::netns::enter)
        .transpose()
        .and_then(|_ns| conntrack::DepartedNat::subscribe(retention, conntrack::DEPARTED_CAPACITY));
    match subscribed {
        Ok(log) => Some(Mutex::new(log)),
        Err(err) => {
            eprintln!(
                "crossover: warning: {err}; connections that end before they are read are not joined across SNAT"
            );
            None
        }
    }
}

async fn age_flows(state: Arc<State>, policy: crate::datapath::AgeingPolicy) {
    let mut sweep = tokio::time::interval(policy.interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = sweep.tick() => {}
            _ = state.table_full.notified() => {
                tokio::time::sleep_until(last + EARLIEST_SWEEP).await;
                sweep.reset();
            }
        }
        last = tokio::time::Instant::now();
        let state = state.clone();
        let policy = policy.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(err) = state.age_flows(&policy) {
                state.count(&err);
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_listens_on_its_node_unless_told() {
        let underlay = std::net::Ipv4Addr::new(10, 0, 0, 5);
        let node = parse_listen("node:9190").unwrap();
        assert_eq!(node, Listen::Node(9190));
        assert_eq!(
            node.resolve(None, underlay).0,
            "10.0.0.5:9190".parse().unwrap()
        );
        let host_ip = "10.0.0.7".parse().ok();
        assert_eq!(
            node.resolve(host_ip, underlay),
            ("10.0.0.7:9190".parse().unwrap(), "--host-ip")
        );
        let every = parse_listen("0.0.0.0:9190").unwrap();
        assert_eq!(
            every.resolve(host_ip, underlay),
            ("0.0.0.0:9190".parse().unwrap(), "--listen")
        );
        for bad in ["node:", "node:http", "everywhere", "10.0.0.5"] {
            let err = parse_listen(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn ticks_and_windows_are_range_checked() {
        let ms = Duration::from_millis;
        let err = |i, g, w| check_ticks(ms(i), ms(g), ms(w)).unwrap_err().to_string();
        assert!(check_ticks(ms(1000), ms(20), ms(600_000)).is_ok());
        let long = err(1000, 20, 600_001);
        assert!(
            long.contains("--window") && long.contains("600 ticks"),
            "{long}"
        );
        assert!(err(500, 20, 300_001).contains("(300s)"));
        assert!(err(99, 20, 1000).contains("--sample-interval"));
        assert!(err(1000, 500, 1000).contains("--reading-guard"));
    }
}
