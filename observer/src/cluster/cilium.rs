//! Cilium's objects, typed with only the fields crossover reads. There is
//! no k8s-openapi type for them, and the CRDs' Go types carry far more than
//! an agent on every node should hold; unknown fields are ignored so newer
//! Cilium versions still decode.
use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::core::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde::{Deserialize, Serialize};

/// `cilium.io/v2` CiliumNode: the operator's per-node pod CIDRs and the
/// node's `cilium_host` address.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CiliumNode {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CiliumNodeSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CiliumNodeSpec {
    #[serde(default)]
    pub addresses: Vec<NodeAddress>,
    #[serde(default)]
    pub ipam: CiliumNodeIpam,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct NodeAddress {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub ip: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CiliumNodeIpam {
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
}

impl CiliumNode {
    /// The `cilium_host` address, as Cilium publishes it.
    pub fn internal_ip(&self) -> Option<&str> {
        self.spec
            .addresses
            .iter()
            .find(|a| a.kind == "CiliumInternalIP")
            .map(|a| a.ip.as_str())
    }
}

/// `cilium.io/v2` CiliumNodeConfig: per-node agent settings for the nodes its
/// selector picks; the migration's `cilium-default` selects migrated nodes.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CiliumNodeConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CiliumNodeConfigSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumNodeConfigSpec {
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    #[serde(default)]
    pub defaults: BTreeMap<String, String>,
}

/// A `Resource` impl for a static Cilium kind; what kube's derive would
/// write, without pulling in its CRD schema machinery.
macro_rules! cilium_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                "cilium.io".into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                "v2".into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

cilium_resource!(
    CiliumNode,
    "CiliumNode",
    "ciliumnodes",
    ClusterResourceScope
);
cilium_resource!(
    CiliumNodeConfig,
    "CiliumNodeConfig",
    "ciliumnodeconfigs",
    NamespaceResourceScope
);

/// True when `selector` selects an object with `labels`: matchLabels and the
/// four matchExpressions operators, as the API server evaluates them.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cilium_node_decodes_with_unknown_fields() {
        let node: CiliumNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
            "metadata": {"name": "worker-1"},
            "spec": {
                "addresses": [
                    {"type": "InternalIP", "ip": "172.18.0.3"},
                    {"type": "CiliumInternalIP", "ip": "10.245.1.1"}
                ],
                "ipam": {"podCIDRs": ["10.245.1.0/24"], "pools": {}},
                "health": {"ipv4": "10.245.1.7"}
            }
        }))
        .expect("decodes");
        assert_eq!(node.internal_ip(), Some("10.245.1.1"));
        assert_eq!(node.spec.ipam.pod_cidrs, ["10.245.1.0/24"]);
    }

    #[test]
    fn selector_semantics() {
        let labels = BTreeMap::from([("io.cilium.migration/cilium-default".into(), "true".into())]);
        let by_label: LabelSelector = serde_json::from_value(
            serde_json::json!({"matchLabels": {"io.cilium.migration/cilium-default": "true"}}),
        )
        .expect("selector");
        assert!(selects(&by_label, &labels));
        assert!(!selects(&by_label, &BTreeMap::new()));
        let not_in: LabelSelector = serde_json::from_value(serde_json::json!({"matchExpressions": [
            {"key": "io.cilium.migration/cilium-default", "operator": "NotIn", "values": ["true"]}
        ]}))
        .expect("selector");
        assert!(!selects(&not_in, &labels));
        assert!(selects(&not_in, &BTreeMap::new()));
    }
}
