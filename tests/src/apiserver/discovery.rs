//! `/version`, `/api`, `/apis` and the per-group resource lists: what
//! `kube::discovery` and `kubectl` read before they touch a resource.
use serde_json::{Value, json};

use super::kinds::Registry;

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "gitVersion": "v1.34.0-crossover-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

/// Every named group, versions in registration order, the first preferred.
pub fn groups(registry: &Registry) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for kind in registry.all() {
        let gvr = &kind.gvr;
        if gvr.group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == gvr.group) {
            Some((_, versions)) if !versions.contains(&gvr.version) => {
                versions.push(gvr.version.clone())
            }
            Some(_) => {}
            None => groups.push((gvr.group.clone(), vec![gvr.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let gv = |v: &String| json!({ "groupVersion": format!("{name}/{v}"), "version": v });
            json!({
                "name": name,
                "versions": versions.iter().map(gv).collect::<Vec<_>>(),
                "preferredVersion": gv(&versions[0]),
            })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// The resources of one group version, `None` if it serves none.
pub fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = registry
        .all()
        .filter(|k| k.gvr.group == group && k.gvr.version == version)
        .flat_map(|k| k.discovery())
        .collect();
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}
