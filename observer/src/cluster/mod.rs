//! The cluster as the API server tells it, kept current by watches (kube-rs
//! reflectors): Nodes, Pods, Services, CiliumNodes, CiliumNodeConfigs, the
//! `cilium-config` ConfigMap, and the crossover agent and probe pods. The
//! agent derives its classification shape and its IP index from these.
pub mod agents;
pub mod calico;
pub mod cilium;
pub mod derive;
pub mod events;
pub mod index;

use std::{
    collections::BTreeMap,
    fmt::Debug,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node as KubeNode, Pod, PodSpec, Service};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;

use crate::{Error, Result};
use cilium::{CiliumNode, CiliumNodeConfig};
use derive::{ClusterObjects, Derived, ShapeOverrides};
use index::IpIndex;

/// Where the agent finds the cluster and its own kind.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// A kubeconfig file; otherwise in-cluster credentials, then
    /// `$KUBECONFIG` and `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// Namespace of Cilium's agent and `cilium-config`.
    pub cilium_namespace: String,
    /// Namespace and label selector of the crossover agent pods (the
    /// DaemonSet): every one is a peer whose counters are compared.
    pub agent_namespace: String,
    pub agent_selector: String,
    /// Label selector of the probe responder pods (any namespace... the
    /// agent's).
    pub probe_selector: String,
    /// The migration driver's state ConfigMap, in the agent's namespace
    /// (`crossover migrate --name`): its progress is exported as metrics.
    pub migration_name: String,
    pub overrides: ShapeOverrides,
}

/// How one watch is doing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchHealth {
    /// The first full list arrived: the store has been complete once.
    pub synced: bool,
    /// The resource does not exist in this cluster (a CRD not installed):
    /// nothing to wait for.
    pub absent: bool,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The watches' health by resource, shared with the watch tasks.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<&'static str, WatchHealth>>>);

impl Health {
    fn update(&self, resource: &'static str, f: impl FnOnce(&mut WatchHealth)) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(resource).or_default());
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, WatchHealth> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The watched resources the shape cannot do without. Cilium's are
/// optional: before Cilium is installed its CRDs do not exist.
const REQUIRED: [&str; 2] = ["nodes", "pods"];
/// Watched for what the agent exports, not for its shape: never waited
/// for (an agent whose RBAC predates it still measures).
const NOT_AWAITED: [&str; 1] = [MIGRATION_STATE];
const MIGRATION_STATE: &str = "migration-state";

pub struct Cluster {
    options: ClusterOptions,
    nodes: Store<KubeNode>,
    pods: Store<Pod>,
    services: Store<Service>,
    cilium_nodes: Store<CiliumNode>,
    node_configs: Store<CiliumNodeConfig>,
    cilium_config: Store<ConfigMap>,
    /// Calico's IPPools and BlockAffinities: absent unless Calico runs.
    ip_pools: Store<DynamicObject>,
    block_affinities: Store<DynamicObject>,
    agents: Store<Pod>,
    probes: Store<Pod>,
    migration: Store<ConfigMap>,
    health: Health,
    changes: watch::Receiver<u64>,
    /// For what the agent writes: Events on its Node.
    client: Client,
}

/// The annotation the migration driver sets on the Node it is migrating
/// (`"true"`), from the node's first step until it is done or rolled back:
/// every agent probes that node steadily (the probe mesh's focus).
pub const MIGRATING_ANNOTATION: &str = "crossover.io/migrating";

/// A crossover agent on another node, whose counters this one reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerAgent {
    pub node: String,
    pub addr: Ipv4Addr,
    /// The pod is Ready: its responder answers on the node's overlay
    /// addresses, so they are probed.
    pub ready: bool,
}

/// A probe responder pod, and the network its address is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProbePod {
    pub node: String,
    pub name: String,
    pub addr: Ipv4Addr,
}

impl Cluster {
    /// Connects and starts every watch. Returns at once: see
    /// [`Cluster::synced`] and [`Cluster::changed`].
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let client = client(options.kubeconfig.as_ref(), true).await?;
        let health = Health::default();
        let (tx, changes) = watch::channel(0u64);
        let w = Watches {
            health: &health,
            changes: &tx,
        };
        let all = watcher::Config::default();
        let cilium_ns = options.cilium_namespace.as_str();
        let cluster = Cluster {
            nodes: w.spawn("nodes", Api::all(client.clone()), all.clone(), slim_node),
            pods: w.spawn("pods", Api::all(client.clone()), all.clone(), slim_pod),
            services: w.spawn(
                "services",
                Api::all(client.clone()),
                all.clone(),
                slim_service,
            ),
            cilium_nodes: w.spawn(
                "ciliumnodes",
                Api::all(client.clone()),
                all.clone(),
                |c: &mut CiliumNode| c.metadata.managed_fields = None,
            ),
            node_configs: w.spawn(
                "ciliumnodeconfigs",
                Api::all(client.clone()),
                all.clone(),
                |c: &mut CiliumNodeConfig| c.metadata.managed_fields = None,
            ),
            cilium_config: w.spawn(
                "cilium-config",
                Api::namespaced(client.clone(), cilium_ns),
                all.clone().fields("metadata.name=cilium-config"),
                |c: &mut ConfigMap| c.metadata.managed_fields = None,
            ),
            ip_pools: w.spawn_dynamic("ippools", calico::ip_pool_resource(), &client, all.clone()),
            block_affinities: w.spawn_dynamic(
                "blockaffinities",
                calico::block_affinity_resource(),
                &client,
                all.clone(),
            ),
            agents: w.spawn(
                "agent-pods",
                Api::namespaced(client.clone(), &options.agent_namespace),
                all.clone().labels(&options.agent_selector),
                slim_pod,
            ),
            probes: w.spawn(
                "probe-pods",
                Api::all(client.clone()),
                all.clone().labels(&options.probe_selector),
                slim_pod,
            ),
            migration: w.spawn(
                MIGRATION_STATE,
                Api::namespaced(client.clone(), &options.agent_namespace),
                all.fields(&format!("metadata.name={}", options.migration_name)),
                |c: &mut ConfigMap| c.metadata.managed_fields = None,
            ),
            options,
            health,
            changes,
            client,
        };
        Ok(cluster)
    }

    /// True once every required watch has listed its resource fully, and
    /// every optional one has too or was found absent.
    pub fn synced(&self) -> bool {
        let health = self.health.snapshot();
        health
            .iter()
            .filter(|(name, _)| !NOT_AWAITED.contains(name))
            .all(|(name, h)| h.synced || (h.absent && !REQUIRED.contains(name)))
            && REQUIRED
                .iter()
                .all(|r| health.get(r).is_some_and(|h| h.synced))
    }

    pub fn health(&self) -> BTreeMap<&'static str, WatchHealth> {
        self.health.snapshot()
    }

    /// Changes whenever any watched object does.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The API client the watches use.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn node_name(&self) -> &str {
        &self.options.node_name
    }

    /// Waits until [`Cluster::synced`], polling the watches' health.
    pub async fn wait_synced(&self) {
        let mut changes = self.changed();
        while !self.synced() {
            let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
        }
    }

    pub fn derive(&self) -> Derived {
        let nodes = self.nodes.state();
        let cilium_nodes = self.cilium_nodes.state();
        let config = self.cilium_config.state();
        let ip_pools = self.ip_pools.state();
        let block_affinities = self.block_affinities.state();
        let pods = self.pods.state();
        let objects = ClusterObjects {
            nodes: nodes.iter().map(AsRef::as_ref).collect(),
            cilium_nodes: cilium_nodes.iter().map(AsRef::as_ref).collect(),
            cilium_config: config.first().map(AsRef::as_ref),
            ip_pools: ip_pools.iter().map(AsRef::as_ref).collect(),
            block_affinities: block_affinities.iter().map(AsRef::as_ref).collect(),
            pods: pods.iter().map(AsRef::as_ref).collect(),
        };
        derive::derive(&objects, &self.options.node_name, &self.options.overrides)
    }

    pub fn index(&self, shape: &crate::shape::ClusterShape) -> IpIndex {
        let pods = self.pods.state();
        let services = self.services.state();
        IpIndex::build(
            shape,
            pods.iter().map(AsRef::as_ref),
            services.iter().map(AsRef::as_ref),
        )
    }

    /// Agent pods on other nodes that have an address.
    pub fn peer_agents(&self) -> Vec<PeerAgent> {
        let mut peers: Vec<PeerAgent> = self
            .agents
            .state()
            .iter()
            .filter_map(|pod| {
                let node = pod.spec.as_ref()?.node_name.clone()?;
                let addr = index::pod_ips(pod).next()?;
                let ready = is_ready(pod);
                (node != self.options.node_name).then_some(PeerAgent { node, addr, ready })
            })
            .collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        peers
    }

    /// Nodes annotated [`MIGRATING_ANNOTATION`]`=true`, by name.
    pub fn migrating_nodes(&self) -> std::collections::BTreeSet<String> {
        self.nodes
            .state()
            .iter()
            .filter(|n| {
                n.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MIGRATING_ANNOTATION))
                    .is_some_and(|v| v == "true")
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect()
    }

    /// The migration driver's state ConfigMap, when there is one.
    pub fn migration_state(&self) -> Option<Arc<ConfigMap>> {
        self.migration.state().into_iter().next()
    }

    /// Ready probe responder pods on other nodes.
    pub fn probe_pods(&self) -> Vec<ProbePod> {
        let mut pods: Vec<ProbePod> = self
            .probes
            .state()
            .iter()
            .filter_map(|pod| {
                let node = pod.spec.as_ref()?.node_name.clone()?;
                let addr = index::pod_ips(pod).next()?;
                let name = pod.metadata.name.clone()?;
                (is_ready(pod) && node != self.options.node_name).then_some(ProbePod {
                    node,
                    name,
                    addr,
                })
            })
            .collect();
        pods.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
        pods
    }

    /// CiliumNodeConfigs that select this node, by name.
    pub fn node_configs_for(&self, node_labels: &BTreeMap<String, String>) -> Vec<String> {
        self.node_configs
            .state()
            .iter()
            .filter(|c| {
                c.spec
                    .node_selector
                    .as_ref()
                    .is_some_and(|s| cilium::selects(s, node_labels))
            })
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<Arc<KubeNode>> {
        self.nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }
}

/// A client from a kubeconfig file or the environment. `retry` keeps
/// kube's own retries of 429/503/504; the migration driver turns them off
/// to see disruption budgets itself.
pub async fn client(kubeconfig: Option<&PathBuf>, retry: bool) -> Result<Client> {
    let mut config = config(kubeconfig).await?;
    config.default_retry = retry;
    Client::try_from(config).map_err(|e| Error::Kube {
        context: "building the API client".into(),
        reason: e.to_string(),
    })
}

/// The configuration [`client`] uses: the kubeconfig file, else
/// in-cluster, $KUBECONFIG, ~/.kube/config.
pub async fn config(kubeconfig: Option<&PathBuf>) -> Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| Error::Kube {
                context: format!("reading kubeconfig {}", path.display()),
                reason: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kube {
                    context: format!("kubeconfig {}", path.display()),
                    reason: e.to_string(),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kube {
            context: "finding cluster credentials (in-cluster, $KUBECONFIG, ~/.kube/config)".into(),
            reason: e.to_string(),
        })?,
    })
}

/// The bearer token readers send to agents (agent/auth.rs): the
/// kubeconfig's user's, or the service account's in a pod. `None` when
/// the credentials carry no token (client certificates) or, unless
/// `required`, when there are no credentials at all.
pub async fn reader_credentials(
    kubeconfig: Option<&PathBuf>,
    required: bool,
) -> Result<Option<crate::loss::client::Credentials>> {
    let config = match config(kubeconfig).await {
        Ok(config) => config,
        Err(_) if !required => return Ok(None),
        Err(e) => return Err(e),
    };
    crate::loss::client::Credentials::from_config(&config, &describe(kubeconfig))
}

/// The cluster a client of [`client`] talks to, in words for a report:
/// the kubeconfig's current context and its server, or in-cluster.
pub fn describe(kubeconfig: Option<&PathBuf>) -> String {
    let file = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => {
            // `client` tries in-cluster first.
            if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
                return format!("in-cluster (API server {host})");
            }
            Kubeconfig::read()
        }
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return format!("unknown (kubeconfig: {e})"),
    };
    let context = file.current_context.clone().unwrap_or_default();
    let cluster = file
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let server = file
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref()?.server.clone())
        .unwrap_or_else(|| "no server".into());
    format!("context {context}, cluster {cluster} ({server})")
}

/// What every watch task shares.
struct Watches<'a> {
    health: &'a Health,
    changes: &'a watch::Sender<u64>,
}

impl Watches<'_> {
    /// A reflector for `api`, run until the process ends. Errors are
    /// retried with kube's backoff and recorded; a 404 on the first list
    /// means the resource (a CRD) is not installed.
    fn spawn<K>(
        &self,
        name: &'static str,
        api: Api<K>,
        config: watcher::Config,
        slim: fn(&mut K),
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.spawn_with(name, api, (), config, slim)
    }

    /// [`Watches::spawn`] for a kind known by its [`ApiResource`] alone
    /// (a CRD read as dynamic objects).
    fn spawn_dynamic(
        &self,
        name: &'static str,
        resource: ApiResource,
        client: &Client,
        config: watcher::Config,
    ) -> Store<DynamicObject> {
        let api = Api::all_with(client.clone(), &resource);
        self.spawn_with(name, api, resource, config, |o: &mut DynamicObject| {
            o.metadata.managed_fields = None;
            o.metadata.annotations = None;
        })
    }

    fn spawn_with<K>(
        &self,
        name: &'static str,
        api: Api<K>,
        dynamic: K::DynamicType,
        config: watcher::Config,
        slim: fn(&mut K),
    ) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
    {
        let writer = reflector::store::Writer::new(dynamic);
        let reader = writer.as_reader();
        let health = self.health.clone();
        let changes = self.changes.clone();
        health.update(name, |_| {});
        let stream = watcher(api, config)
            .default_backoff()
            .modify(slim)
            .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        health.update(name, |h| {
                            h.synced = true;
                            h.absent = false;
                        });
                        changes.send_modify(|v| *v += 1);
                    }
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                        changes.send_modify(|v| *v += 1)
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let absent = matches!(&err, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                        health.update(name, |h| {
                            h.errors += 1;
                            h.absent = absent;
                            h.last_error = Some(err.to_string());
                        });
                        changes.send_modify(|v| *v += 1);
                    }
                }
            }
        });
        reader
    }
}

/// The pod's Ready condition is True.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// An agent on every node holds every pod; keep only what it reads.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            host_network: spec.host_network,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}

/// A node's image list alone can be tens of kilobytes.
fn slim_node(node: &mut KubeNode) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

fn slim_service(service: &mut Service) {
    service.metadata.managed_fields = None;
    service.metadata.annotations = None;
}
