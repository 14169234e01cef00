//! Calico's own objects, read as dynamic objects (no Calico crate): IPPools
//! (`crd.projectcalico.org/v1`: `spec.cidr`, `spec.ipipMode`,
//! `spec.vxlanMode`, `spec.disabled`) say each legacy network's range and
//! encapsulation, CrossSubnet included; BlockAffinities (`spec.cidr`,
//! `spec.node`, `spec.state`) say which blocks each node holds. A bad
//! object is refused with its name and field, and the others still apply.
use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    core::ResourceExt,
};
use serde_json::Value;

use crate::shape::Encapsulation;

pub const GROUP: &str = "crd.projectcalico.org";
pub const VERSION: &str = "v1";

pub fn ip_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, "IPPool"), "ippools")
}

pub fn block_affinity_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "BlockAffinity"),
        "blockaffinities",
    )
}

/// A pool's `ipipMode` or `vxlanMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Always,
    CrossSubnet,
    Never,
}

/// An enabled IPv4 pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub cidr: Ipv4Net,
    pub encapsulation: Encapsulation,
    /// The tunnel only towards nodes in another subnet.
    pub cross_subnet: bool,
    /// "IPPool NAME spec.vxlanMode=CrossSubnet": where the encapsulation
    /// came from.
    pub source: String,
}

/// What the pools say: the IPv4 pools in use, and those left out.
#[derive(Debug, Default)]
pub struct Pools {
    pub pools: Vec<Pool>,
    /// Bad objects, each named with its field.
    pub errors: Vec<String>,
    /// Disabled and IPv6 pools: not the legacy network's IPv4 ranges.
    pub skipped: usize,
}

/// Reads every IPPool; `vxlan_port` is Felix's VXLAN port.
pub fn pools(objects: &[&DynamicObject], vxlan_port: u16) -> Pools {
    let mut out = Pools::default();
    for object in objects {
        match pool(object, vxlan_port) {
            Ok(Some(pool)) => out.pools.push(pool),
            Ok(None) => out.skipped += 1,
            Err(e) => out.errors.push(e),
        }
    }
    out.pools.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn pool(object: &DynamicObject, vxlan_port: u16) -> Result<Option<Pool>, String> {
    let name = object.name_any();
    let what = |field: &str, problem: String| format!("IPPool {name:?} {field}: {problem}");
    let spec = &object.data["spec"];
    if spec.get("disabled").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let cidr = text(spec, "cidr").map_err(|p| what("spec.cidr", p))?;
    if cidr.contains(':') {
        return Ok(None);
    }
    let cidr: Ipv4Net = cidr
        .parse()
        .map_err(|_| what("spec.cidr", format!("{cidr:?} is not an IPv4 CIDR")))?;
    let ipip = mode(spec, "ipipMode").map_err(|p| what("spec.ipipMode", p))?;
    let vxlan = mode(spec, "vxlanMode").map_err(|p| what("spec.vxlanMode", p))?;
    let (encapsulation, mode, field) = match (ipip, vxlan) {
        (Mode::Never, Mode::Never) => (Encapsulation::Native, Mode::Never, "both Never"),
        (Mode::Never, vxlan) => (
            Encapsulation::Vxlan { port: vxlan_port },
            vxlan,
            "spec.vxlanMode",
        ),
        (ipip, Mode::Never) => (Encapsulation::Ipip, ipip, "spec.ipipMode"),
        _ => {
            return Err(what(
                "spec.ipipMode",
                "IP-in-IP and VXLAN both on (Calico refuses such a pool)".into(),
            ));
        }
    };
    let source = match encapsulation {
        Encapsulation::Native => format!("IPPool {name} spec.ipipMode and spec.vxlanMode Never"),
        _ => format!("IPPool {name} {field}={mode:?}"),
    };
    Ok(Some(Pool {
        name,
        cidr: cidr.trunc(),
        encapsulation,
        cross_subnet: mode == Mode::CrossSubnet,
        source,
    }))
}

fn text<'a>(spec: &'a Value, key: &str) -> Result<&'a str, String> {
    match spec.get(key) {
        None | Some(Value::Null) => Err("missing".into()),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{other} is not a string")),
    }
}

/// Calico's modes; absent is `Never`, Calico's default.
fn mode(spec: &Value, key: &str) -> Result<Mode, String> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(Mode::Never),
        Some(Value::String(s)) => match s.as_str() {
            "Always" => Ok(Mode::Always),
            "CrossSubnet" => Ok(Mode::CrossSubnet),
            "Never" | "" => Ok(Mode::Never),
            other => Err(format!("{other:?} is not Always, CrossSubnet or Never")),
        },
        Some(other) => Err(format!("{other} is not a string")),
    }
}

/// Each node's confirmed IPv4 blocks, by node name.
#[derive(Debug, Default)]
pub struct Blocks {
    pub by_node: BTreeMap<String, Vec<Ipv4Net>>,
    pub errors: Vec<String>,
    /// Pending or deleted affinities and IPv6 blocks.
    pub skipped: usize,
}

pub fn blocks(objects: &[&DynamicObject]) -> Blocks {
    let mut out = Blocks::default();
    for object in objects {
        match block(object) {
            Ok(Some((node, cidr))) => out.by_node.entry(node).or_default().push(cidr),
            Ok(None) => out.skipped += 1,
            Err(e) => out.errors.push(e),
        }
    }
    for blocks in out.by_node.values_mut() {
        blocks.sort();
    }
    out
}

fn block(object: &DynamicObject) -> Result<Option<(String, Ipv4Net)>, String> {
    let name = object.name_any();
    let what = |field: &str, problem: String| format!("BlockAffinity {name:?} {field}: {problem}");
    let spec = &object.data["spec"];
    // Calico writes `deleted` as a string ("false"/"true").
    let deleted = matches!(spec.get("deleted"), Some(Value::String(s)) if s == "true")
        || spec.get("deleted").and_then(Value::as_bool) == Some(true);
    let confirmed = spec
        .get("state")
        .and_then(Value::as_str)
        .is_none_or(|s| s == "confirmed");
    let cidr = text(spec, "cidr").map_err(|p| what("spec.cidr", p))?;
    let node = text(spec, "node").map_err(|p| what("spec.node", p))?;
    if node.is_empty() {
        return Err(what("spec.node", "empty".into()));
    }
    if deleted || !confirmed || cidr.contains(':') {
        return Ok(None);
    }
    let parsed: Ipv4Net = cidr
        .parse()
        .map_err(|_| what("spec.cidr", format!("{cidr:?} is not an IPv4 CIDR")))?;
    if parsed.addr() != parsed.network() {
        return Err(what(
            "spec.cidr",
            format!("{cidr} has host bits set: a block is {}", parsed.trunc()),
        ));
    }
    Ok(Some((node.to_string(), parsed)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(resource: &ApiResource, name: &str, spec: Value) -> DynamicObject {
        DynamicObject::new(name, resource).data(json!({ "spec": spec }))
    }

    #[test]
    fn pools_give_each_range_its_encapsulation_crosssubnet_included() {
        let r = ip_pool_resource();
        let objects = [
            object(
                &r,
                "default-ipv4-ippool",
                json!({"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet", "ipipMode": "Never"}),
            ),
            object(
                &r,
                "ipip",
                json!({"cidr": "10.250.0.0/16", "ipipMode": "Always"}),
            ),
            object(&r, "routed", json!({"cidr": "10.251.0.0/16"})),
            object(
                &r,
                "v6",
                json!({"cidr": "fd00::/48", "vxlanMode": "Always"}),
            ),
            object(
                &r,
                "off",
                json!({"cidr": "10.252.0.0/16", "vxlanMode": "Always", "disabled": true}),
            ),
        ];
        let got = pools(&objects.iter().collect::<Vec<_>>(), 4789);
        assert_eq!(got.errors, Vec::<String>::new());
        assert_eq!(got.skipped, 2);
        let summary: Vec<(&str, Encapsulation, bool, &str)> = got
            .pools
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.encapsulation,
                    p.cross_subnet,
                    p.source.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "default-ipv4-ippool",
                    Encapsulation::Vxlan { port: 4789 },
                    true,
                    "IPPool default-ipv4-ippool spec.vxlanMode=CrossSubnet"
                ),
                (
                    "ipip",
                    Encapsulation::Ipip,
                    false,
                    "IPPool ipip spec.ipipMode=Always"
                ),
                (
                    "routed",
                    Encapsulation::Native,
                    false,
                    "IPPool routed spec.ipipMode and spec.vxlanMode Never"
                ),
            ]
        );
    }

    #[test]
    fn a_bad_pool_is_named_with_its_field() {
        let r = ip_pool_resource();
        let cases = [
            (
                json!({"vxlanMode": "Always"}),
                "IPPool \"p\" spec.cidr: missing",
            ),
            (
                json!({"cidr": "10.244.0.0/33"}),
                "IPPool \"p\" spec.cidr: \"10.244.0.0/33\" is not an IPv4 CIDR",
            ),
            (
                json!({"cidr": "10.244.0.0/16", "vxlanMode": "Sometimes"}),
                "IPPool \"p\" spec.vxlanMode: \"Sometimes\" is not Always, CrossSubnet or Never",
            ),
            (
                json!({"cidr": "10.244.0.0/16", "ipipMode": 1}),
                "IPPool \"p\" spec.ipipMode: 1 is not a string",
            ),
            (
                json!({"cidr": "10.244.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}),
                "IPPool \"p\" spec.ipipMode: IP-in-IP and VXLAN both on",
            ),
        ];
        for (spec, want) in cases {
            let bad = object(&r, "p", spec);
            let good = object(&r, "q", json!({"cidr": "10.245.0.0/16"}));
            let got = pools(&[&bad, &good], 4789);
            assert_eq!(got.errors.len(), 1, "{got:?}");
            assert!(got.errors[0].starts_with(want), "{}", got.errors[0]);
            assert_eq!(got.pools.len(), 1, "the good pool still applies");
        }
    }

    #[test]
    fn confirmed_blocks_are_their_nodes_and_bad_ones_are_named() {
        let r = block_affinity_resource();
        let objects = [
            object(
                &r,
                "worker-1-10-244-1-0-26",
                json!({"cidr": "10.244.1.0/26", "node": "worker-1", "state": "confirmed", "deleted": "false"}),
            ),
            object(
                &r,
                "worker-1-10-244-1-64-26",
                json!({"cidr": "10.244.1.64/26", "node": "worker-1", "state": "confirmed"}),
            ),
            object(
                &r,
                "pending",
                json!({"cidr": "10.244.2.0/26", "node": "worker-2", "state": "pending"}),
            ),
            object(
                &r,
                "gone",
                json!({"cidr": "10.244.3.0/26", "node": "worker-3", "deleted": "true"}),
            ),
            object(&r, "nameless", json!({"cidr": "10.244.4.0/26"})),
            object(
                &r,
                "hosty",
                json!({"cidr": "10.244.5.1/26", "node": "worker-5"}),
            ),
        ];
        let got = blocks(&objects.iter().collect::<Vec<_>>());
        assert_eq!(
            got.by_node["worker-1"],
            vec![
                "10.244.1.0/26".parse::<Ipv4Net>().unwrap(),
                "10.244.1.64/26".parse().unwrap()
            ]
        );
        assert_eq!(got.by_node.len(), 1);
        assert_eq!(got.skipped, 2);
        assert_eq!(
            got.errors,
            [
                "BlockAffinity \"nameless\" spec.node: missing",
                "BlockAffinity \"hosty\" spec.cidr: 10.244.5.1/26 has host bits set: a block is 10.244.5.0/26",
            ]
        );
    }
}
