//! A fake Kubernetes API server speaking the real REST and watch protocol
//! over plain HTTP, for code that uses kube-rs (reflectors, watchers, a
//! migration driver) where no kube-apiserver can run.
//!
//! ```no_run
//! # async fn demo() {
//! use crossover_tests::apiserver::{FakeApiServer, fixtures};
//! let server = FakeApiServer::start().unwrap();
//! for obj in fixtures::cluster(3, 1) {
//!     server.apply(obj).unwrap();
//! }
//! server.write_kubeconfig("/tmp/kubeconfig".as_ref()).unwrap();
//! let client = server.client(); // or kube::Config::from_custom_kubeconfig
//! # }
//! ```
//!
//! Objects are JSON values in one store with one resourceVersion counter;
//! the test writes through the same path as HTTP clients, so its writes
//! reach watches the same way. What differs from a real server: no
//! authentication, admission, defaulting or validation beyond names and
//! namespaces; no finalizers (deletion is immediate); strategic merge and
//! apply patches are JSON merge patches; no conversion between versions.
//!
//! By itself it runs no controllers: a deleted pod stays gone and an
//! eviction deletes unconditionally. [`sim::ClusterSim`] adds what a
//! migration touches: evictions that honour PodDisruptionBudgets, the
//! DaemonSet, ReplicaSet and disruption controllers, a scheduler, and
//! kubelets that address pods from their node's current network. What
//! differs from a real cluster there: one pass over the whole store per
//! write instead of informers and work queues; no graceful termination
//! (pods go at once, with no `deletionTimestamp`); DaemonSet pods are
//! bound by their controller (`spec.nodeName`), not through the
//! scheduler; the scheduler only filters on readiness, cordons, taints and
//! `nodeSelector` and scores by pod count; the eviction subresource
//! computes the budget from the pods at the time of the request rather
//! than reading a possibly stale PDB status; a node turns its pods NotReady
//! at once (no 40 s grace, no taint-based eviction); readiness is a timer,
//! not a probe.
mod discovery;
pub mod fixtures;
mod kinds;
mod log;
mod patch;
pub mod reviews;
mod routes;
mod selector;
pub mod sim;
mod status;
mod store;
mod subresource;
mod watch;

use std::{
    io,
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::Router;
use k8s_openapi::Resource;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::{runtime::Handle, sync::oneshot};

pub use kinds::{Gvr, Registry, ResourceKind};
pub use log::{RequestRecord, Stats};
pub use patch::{Patch, merge};
pub use reviews::{ADMIN_TOKEN, Reviews, Rule, User};
pub use selector::{FieldSelector, LabelSelector, Selectors};
pub use status::{ApiError, success};
pub use store::{Change, ChangeType, DEFAULT_HISTORY, ObjKey, Reactor, Store};
pub use subresource::{SubresourceHandler, SubresourceRequest, evict_unconditionally};

use routes::{Close, Shared};
use subresource::Handlers;

#[derive(Clone, Debug)]
pub struct Options {
    /// The kinds served; [`Registry::cluster`] by default.
    pub registry: Registry,
    /// Events kept for watches to resume from.
    pub history: usize,
    /// How often a watch that allows bookmarks gets one (real: ~1 min).
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registry: Registry::cluster(),
            history: DEFAULT_HISTORY,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// A running fake API server. Dropping it stops it and ends its watches.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// Its own runtime when started outside one (the lab's binaries).
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// On 127.0.0.1, a free port, default options.
    pub fn start() -> io::Result<Self> {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> io::Result<Self> {
        Self::start_on_with(TcpListener::bind("127.0.0.1:0")?, options)
    }

    /// On a listener already bound, e.g. inside a network namespace.
    pub fn start_on(listener: TcpListener) -> io::Result<Self> {
        Self::start_on_with(listener, Options::default())
    }

    /// Serves on the current tokio runtime if there is one, else on a
    /// runtime of its own, so synchronous callers can use it too.
    pub fn start_on_with(listener: TcpListener, options: Options) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (runtime, handle) = match Handle::try_current() {
            Ok(handle) => (None, handle),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("fake-apiserver")
                    .enable_all()
                    .build()?;
                let handle = rt.handle().clone();
                (Some(rt), handle)
            }
        };
        let _entered = handle.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            store: Store::new(options.registry.clone(), options.history),
            log: Default::default(),
            options,
            handlers: RwLock::new(Handlers::defaults()),
            reviews: RwLock::new(Reviews::default()),
            closer: tokio::sync::watch::channel(Close::default()).0,
        });
        let app = Router::new()
            .fallback(routes::handle)
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        handle.spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                eprintln!("fake apiserver: {e}");
            }
        });
        Ok(FakeApiServer {
            shared,
            addr,
            shutdown: Some(tx),
            runtime,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ip:port`, what a kubeconfig's `server` holds.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: plain HTTP, namespace `default`, the
    /// admin's bearer token ([`ADMIN_TOKEN`], allowed everything).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with_token(ADMIN_TOKEN)
    }

    /// A kubeconfig whose user sends `token`.
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: crossover-fake\n  cluster:\n    server: {}\n\
             users:\n\
             - name: crossover-fake\n  user:\n    token: {}\n\
             contexts:\n\
             - name: crossover-fake\n  context:\n    cluster: crossover-fake\n    user: crossover-fake\n    namespace: default\n\
             current-context: crossover-fake\n",
            self.url(),
            token
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// A kube-rs config for this server, as the kubeconfig gives it.
    /// Mind `default_retry`: kube-rs retries 429/503/504 by default.
    pub fn config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().expect("the server URL parses"))
    }

    /// A kube-rs client with the default config. Needs a tokio runtime
    /// (the client's buffer spawns a task).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("an HTTP client builds")
    }

    /// The store, for writes from simulated controllers.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Creates the object or replaces it whatever its resourceVersion; its
    /// `apiVersion` and `kind` say where it goes.
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        self.store().apply(obj)
    }

    /// Creates; 409 if it exists.
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let kind = self.store().kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        self.store().create(&kind.gvr, ns.as_deref(), obj, false)
    }

    pub fn get(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.store().get(gvr, namespace, name)
    }

    /// A k8s-openapi typed read, e.g. `server.get_as::<Node>(None, "node-1")`.
    pub fn get_as<K: Resource + DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        let v = self.get(&Gvr::of::<K>(), namespace, name)?;
        Some(serde_json::from_value(v).expect("stored objects deserialize as their type"))
    }

    /// Objects of a kind, in one namespace or (`None`) all.
    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>) -> Vec<Value> {
        self.store().list(gvr, namespace)
    }

    /// Merge-patches an existing object.
    pub fn patch(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        merge: Value,
    ) -> Result<Value, ApiError> {
        self.store()
            .patch(gvr, namespace, name, &Patch::Merge(merge), false)
    }

    pub fn delete(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store().delete(gvr, namespace, name, false)
    }

    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// Forgets the watch history: a client resuming from any older
    /// resourceVersion gets 410 Gone and must relist.
    pub fn compact(&self) {
        self.store().compact()
    }

    /// Ends every open watch cleanly, as a watch timeout would; clients
    /// reconnect from the last resourceVersion they saw.
    pub fn close_watches(&self) {
        self.shared.closer.send_modify(|c| {
            c.epoch += 1;
            c.gone = false;
        });
    }

    /// Compacts the history and ends every open watch with an ERROR event
    /// carrying 410 Gone, as the real server does to a watch that fell
    /// behind: clients must relist. (A watch that keeps up never needs the
    /// history, so compacting alone does not disturb it.)
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.closer.send_modify(|c| {
            c.epoch += 1;
            c.gone = true;
        });
    }

    /// Serves another kind (a CRD being "installed").
    pub fn register(&self, kind: ResourceKind) {
        self.store().register(kind)
    }

    /// Runs `reactor` after every committed write (see [`Reactor`]).
    pub fn on_write(&self, reactor: impl Fn(&Store, &Change) + Send + Sync + 'static) {
        self.store().on_write(Arc::new(reactor))
    }

    /// Answers `.../{plural}/{name}/{sub}` of `group` (every version) with
    /// `handler`, replacing any earlier one (e.g. `pods/eviction`).
    pub fn on_subresource(
        &self,
        group: &str,
        plural: &str,
        sub: &str,
        handler: impl Fn(&Store, &SubresourceRequest) -> Result<(u16, Value), ApiError>
        + Send
        + Sync
        + 'static,
    ) {
        let mut handlers = self.shared.handlers.write().unwrap();
        handlers.insert(group, plural, sub, Arc::new(handler));
    }

    /// `token` authenticates as `user` in TokenReviews.
    pub fn add_token(&self, token: &str, user: User) {
        self.reviews().add_token(token, user);
    }

    /// SubjectAccessReviews matching `rule` are allowed.
    pub fn allow(&self, rule: Rule) {
        self.reviews().allow(rule);
    }

    /// Reviews answered `by` late (`None`: at once), as from an API server
    /// that is overloaded or half gone.
    pub fn stall_reviews(&self, by: Option<Duration>) {
        self.reviews().stall = by;
    }

    fn reviews(&self) -> std::sync::RwLockWriteGuard<'_, Reviews> {
        self.shared
            .reviews
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Stops serving now, as a crashed API server: open watches end and
    /// new connections are refused. Dropping stops it too.
    pub fn stop(&mut self) {
        self.close_watches();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn stats(&self) -> Stats {
        self.shared.log.stats()
    }

    /// The requests served, oldest first (the last 10 000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.log.requests()
    }

    /// Polls `cond` every 10 ms until it holds or `timeout` passes;
    /// whether it held.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.runtime.take() {
            // Allowed from inside another runtime, unlike dropping it.
            rt.shutdown_background();
        }
    }
}
