//! One consistent read of the objects the controllers look at, and the
//! small questions they ask of them (is it Ready, who owns it, does this
//! pod tolerate that node). Controllers re-read after writing, so a pass
//! never acts on a world its own writes made stale.
use std::net::Ipv4Addr;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, ReplicaSet},
        core::v1::{ConfigMap, Node, Pod},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde_json::{Value, json};

use super::super::{kinds::Gvr, status::ApiError, store::Store};

pub(crate) struct World {
    pub nodes: Vec<Value>,
    pub pods: Vec<Value>,
    pub daemonsets: Vec<Value>,
    pub replicasets: Vec<Value>,
    pub pdbs: Vec<Value>,
    pub cilium_nodes: Vec<Value>,
    /// `custom-cni-conf` of `kube-system/cilium-config`: while it is true
    /// (the migration's first phase, and when the ConfigMap is missing)
    /// an agent writes its CNI config only where the CiliumNodeConfig
    /// (the migration label) says so; once false, everywhere.
    pub custom_cni_conf: bool,
}

impl World {
    pub fn read(store: &Store) -> World {
        let list = |gvr: Gvr| {
            if store.kind(&gvr).is_some() {
                store.list(&gvr, None)
            } else {
                Vec::new()
            }
        };
        World {
            nodes: list(Gvr::of::<Node>()),
            pods: list(Gvr::of::<Pod>()),
            daemonsets: list(Gvr::of::<DaemonSet>()),
            replicasets: list(Gvr::of::<ReplicaSet>()),
            pdbs: list(Gvr::of::<PodDisruptionBudget>()),
            cilium_nodes: list(Gvr::cilium_nodes()),
            custom_cni_conf: store
                .get(
                    &Gvr::of::<ConfigMap>(),
                    Some("kube-system"),
                    "cilium-config",
                )
                .is_none_or(|cm| cm["data"]["custom-cni-conf"] != "false"),
        }
    }

    pub fn node(&self, name: &str) -> Option<&Value> {
        self.nodes.iter().find(|n| self::name(n) == name)
    }

    pub fn cilium_node(&self, name: &str) -> Option<&Value> {
        self.cilium_nodes.iter().find(|n| self::name(n) == name)
    }

    /// Live (not terminal) pods bound to `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.pods
            .iter()
            .filter(move |p| pod_node(p) == Some(node) && !pod_terminal(p))
    }

    /// Live pods whose controller is `kind`/`name` in `namespace`.
    pub fn owned<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        owner: &'a str,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.pods.iter().filter(move |p| {
            namespace_of(p) == namespace
                && !pod_terminal(p)
                && controller_of(p).is_some_and(|(k, n)| k == kind && n == owner)
        })
    }
}

pub(crate) fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub(crate) fn namespace_of(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub(crate) fn uid(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or_default()
}

pub(crate) fn labels(obj: &Value) -> &Value {
    &obj["metadata"]["labels"]
}

pub(crate) fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    labels(obj).get(key).and_then(Value::as_str)
}

pub(crate) fn pod_node(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
}

pub(crate) fn pod_ip(pod: &Value) -> Option<Ipv4Addr> {
    pod["status"]["podIP"].as_str()?.parse().ok()
}

pub(crate) fn host_network(pod: &Value) -> bool {
    pod["spec"]["hostNetwork"] == true
}

pub(crate) fn pod_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

pub(crate) fn pod_ready(pod: &Value) -> bool {
    !pod_terminal(pod)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && condition(pod, "Ready") == Some("True")
}

pub(crate) fn node_ready(node: &Value) -> bool {
    condition(node, "Ready") == Some("True")
}

pub(crate) fn node_unschedulable(node: &Value) -> bool {
    node["spec"]["unschedulable"] == true
}

pub(crate) fn internal_ip(node: &Value) -> Option<Ipv4Addr> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()
}

/// The controller ownerReference's kind and name.
pub(crate) fn controller_of(pod: &Value) -> Option<(&str, &str)> {
    let refs = pod["metadata"]["ownerReferences"].as_array()?;
    let owner = refs
        .iter()
        .find(|r| r["controller"] == true)
        .or(refs.first())?;
    Some((owner["kind"].as_str()?, owner["name"].as_str()?))
}

/// A metav1.LabelSelector (`matchLabels`, `matchExpressions`) against an
/// object's labels. An empty selector matches everything.
pub(crate) fn selector_matches(selector: &Value, obj: &Value) -> bool {
    let got = |k: &str| label(obj, k);
    let labels_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| got(k) == v.as_str()));
    let exprs_ok = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or_default() {
                "In" => got(key).is_some_and(|l| values.contains(&l)),
                "NotIn" => got(key).is_none_or(|l| !values.contains(&l)),
                "Exists" => got(key).is_some(),
                "DoesNotExist" => got(key).is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// `spec.nodeSelector` (a plain map) against a node's labels.
pub(crate) fn node_selector_matches(pod_spec: &Value, node: &Value) -> bool {
    pod_spec["nodeSelector"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(node, k) == v.as_str()))
}

/// Whether the pod spec tolerates every NoSchedule and NoExecute taint of
/// the node, as the scheduler's TaintToleration filter asks.
pub(crate) fn tolerates_node(pod_spec: &Value, node: &Value) -> bool {
    let tolerations = pod_spec["tolerations"].as_array();
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
        .all(|taint| tolerations.is_some_and(|ts| ts.iter().any(|t| tolerates(t, taint))))
}

/// One toleration against one taint, as `v1.Toleration.ToleratesTaint`.
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let effect = s(&toleration["effect"]);
    if !effect.is_empty() && effect != s(&taint["effect"]) {
        return false;
    }
    let key = s(&toleration["key"]);
    match toleration["operator"].as_str().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == s(&taint["key"]),
        _ => key == s(&taint["key"]) && s(&toleration["value"]) == s(&taint["value"]),
    }
}

pub(crate) fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).expect("time serializes")
}

/// Sets condition `kind` to `status`, keeping its lastTransitionTime when
/// the status did not change.
pub(crate) fn set_condition(obj: &mut Value, kind: &str, status: bool, reason: Option<&str>) {
    let status = if status { "True" } else { "False" };
    if !obj["status"].is_object() {
        obj["status"] = json!({});
    }
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let conds = obj["status"]["conditions"]
        .as_array_mut()
        .expect("made an array above");
    let old = conds.iter().position(|c| c["type"] == kind);
    let since = old
        .map(|i| &conds[i])
        .filter(|c| c["status"] == status)
        .map(|c| c["lastTransitionTime"].clone())
        .filter(|t| !t.is_null())
        .unwrap_or_else(now);
    let mut cond = json!({ "type": kind, "status": status, "lastTransitionTime": since });
    if let Some(r) = reason {
        cond["reason"] = json!(r);
    }
    match old {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
}

/// Writes `pod` changed by `f`, read-modify-write of the stored object, as
/// long as it is still the same pod (uid): a controller never resurrects
/// or rewrites a pod that was replaced meanwhile.
pub fn update_pod(
    store: &Store,
    pod: &Value,
    f: impl FnOnce(&mut Value),
) -> Result<Value, ApiError> {
    let uid = uid(pod).to_string();
    let gvr = Gvr::of::<k8s_openapi::api::core::v1::Pod>();
    store.mutate(&gvr, Some(namespace_of(pod)), name(pod), false, |cur| {
        let mut pod = cur
            .filter(|p| self::uid(p) == uid)
            .cloned()
            .ok_or_else(|| ApiError::conflict(&gvr, &uid))?;
        f(&mut pod);
        Ok(Some(pod))
    })
}
