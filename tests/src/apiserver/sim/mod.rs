//! A cluster's controllers on the fake API server, so a migration driver
//! can be run end to end: evictions that honour PodDisruptionBudgets, the
//! DaemonSet and ReplicaSet controllers, the scheduler, and kubelets that
//! give pods addresses from their node's current network (legacy until
//! the migration label is set *and* the Cilium agent restarted).
//!
//! ```no_run
//! # async fn demo() {
//! use crossover_tests::apiserver::{FakeApiServer, fixtures, sim::{ClusterSim, SimOptions}};
//! let server = FakeApiServer::start().unwrap();
//! for obj in fixtures::cluster(3, 0) {
//!     server.apply(obj).unwrap();
//! }
//! let sim = ClusterSim::install(&server, SimOptions::default());
//! sim.on_pod_placed(|p| println!("{}/{} on {} at {}", p.namespace, p.name, p.node, p.ip));
//! // ... drive the cluster through `server.client()` ...
//! sim.settle().await;
//! # }
//! ```
//!
//! The controllers are level-triggered passes over the whole store, run by
//! one thread of the sim's own: every committed write wakes it (an
//! `on_write` reactor that only queues and signals, so no write path ever
//! waits on the sim), and timers wake it for delayed readiness. Writes go
//! through [`Store::mutate`] as read-modify-write of the current object,
//! so watches see them and nothing a client wrote meanwhile is lost.
mod addressing;
mod daemonset;
mod events;
mod eviction;
mod kubelet;
mod replicaset;
mod scheduler;
mod world;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use k8s_openapi::{Resource, api::core::v1::Node};
use serde_json::{Value, json};

use self::{addressing::Ipam, world::World};
use super::{
    FakeApiServer,
    kinds::Gvr,
    status::ApiError,
    store::{ChangeType, Store},
};
use crate::lab::plan::Network;

pub use eviction::{Budget, budget, evict_with_budgets};

/// Which pods are the Cilium agent: the ones whose restart switches a
/// node's CNI.
#[derive(Clone, Debug)]
pub struct AgentSelector {
    pub namespace: String,
    pub label: (String, String),
}

impl Default for AgentSelector {
    /// `kube-system`, `k8s-app=cilium`, as Cilium's Helm chart labels them.
    fn default() -> Self {
        AgentSelector {
            namespace: "kube-system".into(),
            label: ("k8s-app".into(), "cilium".into()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    /// From a pod's containers starting to it being Ready.
    pub pod_ready_delay: Duration,
    /// The same for the Cilium agent, which is slower in life.
    pub agent_ready_delay: Duration,
    pub agent: AgentSelector,
    /// How long [`ClusterSim::settle`] waits before it panics.
    pub settle_timeout: Duration,
    /// Answer `pods/eviction` with [`evict_with_budgets`] (the server's
    /// default deletes unconditionally).
    pub disruption_budgets: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            pod_ready_delay: Duration::from_millis(50),
            agent_ready_delay: Duration::from_millis(150),
            agent: AgentSelector::default(),
            settle_timeout: Duration::from_secs(10),
            disruption_budgets: true,
        }
    }
}

/// A pod the sim gave an address to, or whose address went with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlacement {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The CNI that gave the address; `None` for a host-network pod.
    pub network: Option<Network>,
}

impl PodPlacement {
    fn of(world: &World, pod: &Value, node: &str, ip: Ipv4Addr) -> Self {
        PodPlacement {
            namespace: world::namespace_of(pod).into(),
            name: world::name(pod).into(),
            uid: world::uid(pod).into(),
            node: node.into(),
            ip,
            network: if world::host_network(pod) {
                None
            } else {
                addressing::network_of_addr(world, node, ip)
            },
        }
    }
}

type Callback = Arc<dyn Fn(&PodPlacement) + Send + Sync>;

#[derive(Default)]
struct Callbacks {
    placed: Vec<Callback>,
    removed: Vec<Callback>,
}

pub(crate) enum Feed {
    Placed(PodPlacement),
    Removed(PodPlacement),
}

/// What one pass did.
#[derive(Default)]
pub(crate) struct Pass {
    pub wrote: bool,
    /// The earliest timer still to fire (a pod due Ready).
    pub deadline: Option<Instant>,
    pub feed: Vec<Feed>,
}

/// A pod's sandbox as its kubelet knows it.
#[derive(Default)]
pub(crate) struct Runtime {
    pub started: bool,
    /// When it turns Ready; `None` until its countdown starts.
    pub ready_at: Option<Instant>,
    /// `FailedCreatePodSandBox` has been recorded; retried every pass.
    pub sandbox_failed: bool,
}

pub(crate) struct State {
    pub options: SimOptions,
    /// Each node's CNI for new pods.
    pub networks: HashMap<String, Network>,
    pub node_ready: HashMap<String, bool>,
    pub ipam: Ipam,
    pub exhausted: HashSet<String>,
    pub agent_stuck: HashSet<String>,
    /// By pod uid.
    pub runtimes: HashMap<String, Runtime>,
    /// By DaemonSet (namespace, name): the revision pods without a
    /// `controller-revision-hash` label are taken to run.
    pub ds_adopted: HashMap<(String, String), String>,
}

impl State {
    fn is_agent(&self, pod: &Value) -> bool {
        let a = &self.options.agent;
        world::namespace_of(pod) == a.namespace && world::label(pod, &a.label.0) == Some(&a.label.1)
    }
}

#[derive(Default)]
struct Wake {
    kicks: u64,
    stop: bool,
}

struct Shared {
    store: Store,
    state: Mutex<State>,
    wake: Mutex<Wake>,
    signal: Condvar,
    /// Pods deleted since the last pass, as they were last.
    deleted: Mutex<Vec<Value>>,
    callbacks: RwLock<Callbacks>,
    /// The kick count at the start of the last pass that found nothing to
    /// do and nothing pending.
    settled: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick(&self) -> u64 {
        let mut w = self.wake.lock().unwrap();
        w.kicks += 1;
        self.signal.notify_all();
        w.kicks
    }

    /// Runs every controller once; returns what it did. Callbacks run
    /// after the state's lock is released, so they may call the sim.
    fn pass(&self) -> Pass {
        let store = &self.store;
        let mut pass = Pass::default();
        let deleted = std::mem::take(&mut *self.deleted.lock().unwrap());
        {
            let mut state = self.state();
            let st = &mut *state;
            let world = World::read(store);
            for pod in &deleted {
                st.runtimes.remove(world::uid(pod));
                if let (Some(node), Some(ip)) = (world::pod_node(pod), world::pod_ip(pod)) {
                    let p = PodPlacement::of(&world, pod, node, ip);
                    pass.feed.push(Feed::Removed(p));
                }
            }
            kubelet::follow_nodes(store, st, &world, &mut pass);
            daemonset::reconcile(store, st, &World::read(store), &mut pass);
            replicaset::reconcile(store, &World::read(store), &mut pass);
            scheduler::schedule(store, &World::read(store), &mut pass);
            kubelet::start(store, st, &World::read(store), &mut pass);
            kubelet::readiness(store, st, &World::read(store), &mut pass);
            let world = World::read(store);
            daemonset::sync_status(store, st, &world, &mut pass);
            replicaset::sync_status(store, &world, &mut pass);
            pass.wrote |= eviction::sync_status(store, &world);
        }
        let callbacks = self.callbacks.read().unwrap();
        for item in &pass.feed {
            let (list, p) = match item {
                Feed::Placed(p) => (&callbacks.placed, p),
                Feed::Removed(p) => (&callbacks.removed, p),
            };
            for f in list {
                f(p);
            }
        }
        pass
    }

    fn run(self: Arc<Self>) {
        loop {
            let epoch = {
                let w = self.wake.lock().unwrap();
                if w.stop {
                    return;
                }
                w.kicks
            };
            let pass = self.pass();
            let quiet = !pass.wrote && pass.feed.is_empty() && pass.deadline.is_none();
            if quiet {
                self.settled.fetch_max(epoch, Ordering::SeqCst);
            }
            if !pass.feed.is_empty() && !pass.wrote {
                // Callbacks ran; look again before sleeping.
                continue;
            }
            let mut w = self.wake.lock().unwrap();
            while !w.stop && w.kicks == epoch {
                match pass.deadline {
                    None => w = self.signal.wait(w).unwrap(),
                    Some(at) => {
                        let now = Instant::now();
                        if now >= at {
                            break;
                        }
                        w = self.signal.wait_timeout(w, at - now).unwrap().0;
                    }
                }
            }
        }
    }
}

/// The simulated controllers of a cluster, installed on a
/// [`FakeApiServer`]. Dropping it stops them (the eviction handler stays).
pub struct ClusterSim {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ClusterSim {
    /// Starts the controllers on `server`'s store and, unless told
    /// otherwise, answers evictions with [`evict_with_budgets`]. Nodes
    /// already labelled for Cilium count as migrated (their agents are
    /// taken to have restarted since the label was set).
    pub fn install(server: &FakeApiServer, options: SimOptions) -> ClusterSim {
        if options.disruption_budgets {
            server.on_subresource("", "pods", "eviction", evict_with_budgets);
        }
        let shared = Arc::new(Shared {
            store: server.store().clone(),
            state: Mutex::new(State {
                options,
                networks: HashMap::new(),
                node_ready: HashMap::new(),
                ipam: Ipam::default(),
                exhausted: HashSet::new(),
                agent_stuck: HashSet::new(),
                runtimes: HashMap::new(),
                ds_adopted: HashMap::new(),
            }),
            wake: Mutex::new(Wake::default()),
            signal: Condvar::new(),
            deleted: Mutex::new(Vec::new()),
            callbacks: RwLock::new(Callbacks::default()),
            settled: AtomicU64::new(0),
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        server.on_write(move |_, change| {
            let Some(sim) = weak.upgrade() else { return };
            if change.change == ChangeType::Deleted && change.key.gvr == Gvr::new("", "v1", "pods")
            {
                sim.deleted.lock().unwrap().push(change.object.clone());
            }
            sim.kick();
        });
        let runner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cluster-sim".into())
            .spawn(move || runner.run())
            .expect("a thread starts");
        ClusterSim {
            shared,
            thread: Some(thread),
        }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Called (on the sim's thread, in order) when a pod gets an address:
    /// created, or its sandbox recreated by a reboot. The pod turns Ready
    /// only after every callback has returned.
    pub fn on_pod_placed(&self, f: impl Fn(&PodPlacement) + Send + Sync + 'static) {
        self.shared
            .callbacks
            .write()
            .unwrap()
            .placed
            .push(Arc::new(f));
    }

    /// Called when a pod holding an address is deleted or loses its
    /// sandbox, before a replacement on the same pass is placed.
    pub fn on_pod_removed(&self, f: impl Fn(&PodPlacement) + Send + Sync + 'static) {
        self.shared
            .callbacks
            .write()
            .unwrap()
            .removed
            .push(Arc::new(f));
    }

    /// The network new pods on `node` join now.
    pub fn network(&self, node: &str) -> Option<Network> {
        self.shared.state().networks.get(node).copied()
    }

    /// Puts `node` in (`on`) or out of one of the failure sets, then wakes
    /// the controllers.
    fn switch(&self, node: &str, on: bool, set: impl FnOnce(&mut State) -> &mut HashSet<String>) {
        let mut s = self.shared.state();
        let set = set(&mut s);
        if on {
            set.insert(node.into());
        } else {
            set.remove(node);
        }
        drop(s);
        self.shared.kick();
    }

    /// A node's IPAM has no address left (for whichever network is in
    /// charge): new pods there stay ContainerCreating with a Warning
    /// `FailedCreatePodSandBox`. `false` lets them start.
    pub fn exhaust_ipam(&self, node: &str, exhausted: bool) {
        self.switch(node, exhausted, |s| &mut s.exhausted);
    }

    /// The Cilium agent pods on `node` run but never turn Ready (and so
    /// never write their CNI config) until this is set back to `false`.
    pub fn set_agent_never_ready(&self, node: &str, stuck: bool) {
        self.switch(node, stuck, |s| &mut s.agent_stuck);
    }

    /// Sets the node's Ready condition as its kubelet would. NotReady takes
    /// its pods' readiness with it; Ready again after NotReady is a reboot:
    /// its pods get new sandboxes and addresses from its current network.
    pub fn set_node_ready(&self, node: &str, ready: bool) -> Result<Value, ApiError> {
        let gvr = Gvr::of::<Node>();
        self.shared.store.mutate(&gvr, None, node, false, |cur| {
            let mut n = cur
                .cloned()
                .ok_or_else(|| ApiError::not_found(&gvr, node))?;
            let (reason, message) = if ready {
                ("KubeletReady", "kubelet is posting ready status")
            } else {
                ("KubeletNotReady", "node is shutting down")
            };
            world::set_condition(&mut n, "Ready", ready, Some(reason));
            if let Some(c) = n["status"]["conditions"]
                .as_array_mut()
                .and_then(|cs| cs.iter_mut().find(|c| c["type"] == "Ready"))
            {
                c["message"] = json!(message);
                c["lastHeartbeatTime"] = world::now();
            }
            Ok(Some(n))
        })
    }

    /// Waits until the controllers have nothing left to do: no write in
    /// their last pass and no pod waiting to turn Ready (agents held back
    /// by [`Self::set_agent_never_ready`] and pods without an address do
    /// not count). Panics after [`SimOptions::settle_timeout`].
    pub async fn settle(&self) {
        let (target, limit) = self.settle_target();
        let deadline = Instant::now() + limit;
        while self.shared.settled.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the cluster sim did not settle within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// [`Self::settle`] for code outside a tokio runtime.
    pub fn settle_blocking(&self) {
        let (target, limit) = self.settle_target();
        let deadline = Instant::now() + limit;
        while self.shared.settled.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the cluster sim did not settle within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn settle_target(&self) -> (u64, Duration) {
        let limit = self.shared.state().options.settle_timeout;
        (self.shared.kick(), limit)
    }

    /// Polls `cond` on the store every 10 ms until it holds or `timeout`
    /// passes; whether it held.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Store) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.shared.store) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ClusterSim {
    fn drop(&mut self) {
        self.shared.wake.lock().unwrap().stop = true;
        self.shared.signal.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deletes a pod (that very pod, by uid); whether it went.
fn delete_pod(store: &Store, pod: &Value) -> bool {
    let uid = world::uid(pod).to_string();
    let gvr = Gvr::new("", "v1", "pods");
    store
        .mutate(
            &gvr,
            Some(world::namespace_of(pod)),
            world::name(pod),
            false,
            |cur| match cur {
                Some(p) if world::uid(p) == uid => Ok(None),
                _ => Err(ApiError::conflict(&gvr, &uid)),
            },
        )
        .is_ok()
}

/// Merges `status` into the object's status when any of its fields
/// differs; whether it wrote.
fn write_status<K: Resource>(store: &Store, obj: &Value, status: Value) -> bool {
    let fields = status.as_object().expect("a status object");
    if fields.iter().all(|(k, v)| &obj["status"][k] == v) {
        return false;
    }
    let gvr = Gvr::of::<K>();
    let ns = Some(world::namespace_of(obj)).filter(|n| !n.is_empty());
    store
        .mutate(&gvr, ns, world::name(obj), false, |cur| {
            let mut o = cur
                .cloned()
                .ok_or_else(|| ApiError::not_found(&gvr, world::name(obj)))?;
            if !o["status"].is_object() {
                o["status"] = json!({});
            }
            for (k, v) in fields {
                o["status"][k] = v.clone();
            }
            Ok(Some(o))
        })
        .is_ok()
}
