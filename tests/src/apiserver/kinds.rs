//! The resource kinds the fake server serves. Nothing is served by accident:
//! a path names a registered (group, version, plural) or it is a 404, as on
//! a cluster where a CRD is not installed.
use std::{any::TypeId, fmt, sync::Arc};

use k8s_openapi::{NamespaceResourceScope, Resource};
use serde_json::{Value, json};

/// Group, version and plural resource name: what a URL path names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// Empty for the core group (`/api/v1`).
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl Gvr {
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Gvr {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
        }
    }

    /// The Gvr of a k8s-openapi type, e.g. `Gvr::of::<Pod>()`.
    pub fn of<K: Resource>() -> Self {
        Gvr::new(K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn cilium_nodes() -> Self {
        Gvr::new("cilium.io", "v2", "ciliumnodes")
    }

    pub fn cilium_node_configs() -> Self {
        Gvr::new("cilium.io", "v2", "ciliumnodeconfigs")
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One served resource: its path, its `kind`, its scope and subresources.
#[derive(Clone, Debug)]
pub struct ResourceKind {
    pub gvr: Gvr,
    pub kind: String,
    pub namespaced: bool,
    /// Subresources listed in discovery (`status`, `eviction`, …); what
    /// answers them is decided by the server's subresource handlers.
    pub subresources: Vec<String>,
}

impl ResourceKind {
    pub fn new(gvr: Gvr, kind: &str, namespaced: bool) -> Self {
        ResourceKind {
            gvr,
            kind: kind.into(),
            namespaced,
            subresources: Vec::new(),
        }
    }

    /// A kind described by its k8s-openapi type.
    pub fn of<K: Resource + 'static>() -> Self
    where
        K::Scope: 'static,
    {
        let namespaced = TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>();
        ResourceKind::new(Gvr::of::<K>(), K::KIND, namespaced)
    }

    pub fn with_subresources(mut self, subresources: &[&str]) -> Self {
        self.subresources = subresources.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The entry of this kind in an `APIResourceList`.
    pub(crate) fn discovery(&self) -> Vec<Value> {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        let mut out = vec![json!({
            "name": self.gvr.resource,
            "singularName": self.kind.to_lowercase(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
        })];
        for sub in &self.subresources {
            out.push(json!({
                "name": format!("{}/{}", self.gvr.resource, sub),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["create", "get", "patch", "update"],
            }));
        }
        out
    }
}

/// Every served kind. Registration can happen while the server runs.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: Vec<Arc<ResourceKind>>,
}

impl Registry {
    /// What a migration to Cilium touches: core workloads and nodes, the
    /// objects a driver writes (ConfigMaps, Leases, Events), PDBs that gate
    /// evictions, and Cilium's CRDs.
    ///
    /// Both versions of CiliumNodeConfig are served, as separate stores:
    /// the fake does not convert between versions.
    pub fn cluster() -> Self {
        use k8s_openapi::api::{
            apps::v1::{DaemonSet, ReplicaSet},
            coordination::v1::Lease,
            core::v1::{ConfigMap, Event, Namespace, Node, Pod, Service},
            policy::v1::PodDisruptionBudget,
        };
        let mut r = Registry::default();
        r.register(ResourceKind::of::<Pod>().with_subresources(&["status", "eviction"]));
        r.register(ResourceKind::of::<Node>().with_subresources(&["status"]));
        r.register(ResourceKind::of::<Service>().with_subresources(&["status"]));
        r.register(ResourceKind::of::<ConfigMap>());
        r.register(ResourceKind::of::<Event>());
        r.register(ResourceKind::of::<Namespace>().with_subresources(&["status"]));
        r.register(ResourceKind::of::<DaemonSet>().with_subresources(&["status"]));
        r.register(ResourceKind::of::<ReplicaSet>().with_subresources(&["status"]));
        r.register(ResourceKind::of::<Lease>());
        r.register(ResourceKind::of::<k8s_openapi::api::events::v1::Event>());
        r.register(ResourceKind::of::<PodDisruptionBudget>().with_subresources(&["status"]));
        // Create-only reviews, answered by `reviews`, never stored.
        r.register(ResourceKind::of::<
            k8s_openapi::api::authentication::v1::TokenReview,
        >());
        r.register(ResourceKind::of::<
            k8s_openapi::api::authorization::v1::SubjectAccessReview,
        >());
        r.register(
            ResourceKind::new(Gvr::cilium_nodes(), "CiliumNode", false)
                .with_subresources(&["status"]),
        );
        for version in ["v2", "v2alpha1"] {
            r.register(ResourceKind::new(
                Gvr::new("cilium.io", version, "ciliumnodeconfigs"),
                "CiliumNodeConfig",
                true,
            ));
        }
        r
    }

    /// Adds a kind, replacing one with the same Gvr.
    pub fn register(&mut self, kind: ResourceKind) {
        self.kinds.retain(|k| k.gvr != kind.gvr);
        self.kinds.push(Arc::new(kind));
    }

    pub fn get(&self, gvr: &Gvr) -> Option<Arc<ResourceKind>> {
        self.kinds.iter().find(|k| &k.gvr == gvr).cloned()
    }

    /// The kind an object's `apiVersion` and `kind` name.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceKind>> {
        self.kinds
            .iter()
            .find(|k| k.gvr.api_version() == api_version && k.kind == kind)
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceKind>> {
        self.kinds.iter()
    }
}
