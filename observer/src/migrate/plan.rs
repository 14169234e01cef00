//! The order nodes are migrated in: workers first, control plane last (the
//! documented procedure), unless the SRE names the nodes and their order.
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use super::MIGRATION_LABEL;

/// Labels that make a node part of the control plane.
const CONTROL_PLANE_LABELS: &[&str] = &[
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNode {
    pub name: String,
    pub control_plane: bool,
}

/// Nodes left out of the plan, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub nodes: Vec<PlannedNode>,
    pub skipped: Vec<Skipped>,
}

#[cfg(test)]
impl Plan {
    /// Worker nodes `names`, in order, none skipped.
    pub fn of(names: &[&str]) -> Plan {
        Plan {
            nodes: names
                .iter()
                .map(|n| PlannedNode {
                    name: n.to_string(),
                    control_plane: false,
                })
                .collect(),
            skipped: vec![],
        }
    }
}

/// How to choose and order nodes.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Exactly these nodes, in this order.
    pub order: Vec<String>,
    /// Also nodes that already carry the migration label (a node migrated
    /// by hand is otherwise drained again for nothing).
    pub include_labelled: bool,
}

pub fn is_control_plane(node: &Node) -> bool {
    let labels = node.metadata.labels.as_ref();
    CONTROL_PLANE_LABELS
        .iter()
        .any(|l| labels.is_some_and(|m| m.contains_key(*l)))
}

pub fn is_labelled(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MIGRATION_LABEL))
        .is_some_and(|v| v == "true")
}

/// The plan over `nodes` (already filtered by the SRE's selector).
pub fn plan(nodes: &[Node], options: &PlanOptions) -> Result<Plan, String> {
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    let mut chosen: Vec<&Node> = if options.order.is_empty() {
        let mut all: Vec<&Node> = nodes.iter().collect();
        // Stable: by role, then by name in natural order (node-2 < node-10).
        all.sort_by(|a, b| {
            (is_control_plane(a), natural_key(&name(a)))
                .cmp(&(is_control_plane(b), natural_key(&name(b))))
        });
        all
    } else {
        let mut seen = std::collections::BTreeSet::new();
        options
            .order
            .iter()
            .map(|wanted| {
                if !seen.insert(wanted) {
                    return Err(format!("node {wanted:?} is named twice in --nodes"));
                }
                nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(wanted.as_str()))
                    .ok_or_else(|| {
                        format!("node {wanted:?} in --nodes does not exist (or is not selected)")
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut plan = Plan::default();
    chosen.retain(|n| {
        if is_labelled(n) && !options.include_labelled {
            plan.skipped.push(Skipped {
                name: name(n),
                reason: format!("already labelled {MIGRATION_LABEL}=true (--include-labelled to migrate it again)"),
            });
            false
        } else {
            true
        }
    });
    plan.nodes = chosen
        .into_iter()
        .map(|n| PlannedNode {
            name: name(n),
            control_plane: is_control_plane(n),
        })
        .collect();
    Ok(plan)
}

/// Splits digits from the rest so `node-10` sorts after `node-9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = c.to_string();
            while let Some(d) = chars.next_if(|d| d.is_ascii_digit()) {
                digits.push(d);
            }
            out.push((
                std::mem::take(&mut text),
                digits.parse().unwrap_or(u64::MAX),
            ));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

impl Plan {
    /// The order the nodes go in, then those left out and why.
    pub fn render(&self) -> String {
        let mut table = crate::table::new(&["order", "node", "role"], 3);
        for (i, n) in self.nodes.iter().enumerate() {
            let role = if n.control_plane {
                "control-plane"
            } else {
                "worker"
            };
            table.add_row([(i + 1).to_string(), n.name.clone(), role.to_string()]);
        }
        let mut out = format!(
            "plan (one node at a time):\n{}",
            crate::table::render(&table)
        );
        if !self.skipped.is_empty() {
            let mut skipped = crate::table::new(&["skipped", "reason"], 2);
            for s in &self.skipped {
                skipped.add_row([s.name.clone(), s.reason.clone()]);
            }
            out.push('\n');
            out.push_str(&crate::table::render(&skipped));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn workers_first_control_plane_last_in_natural_order() {
        let nodes = [
            node("cp-1", &[("node-role.kubernetes.io/control-plane", "")]),
            node("node-10", &[]),
            node("node-9", &[]),
            node("done", &[(MIGRATION_LABEL, "true")]),
        ];
        let p = plan(&nodes, &PlanOptions::default()).unwrap();
        assert_eq!(names(&p), ["node-9", "node-10", "cp-1"]);
        assert!(p.nodes[2].control_plane);
        assert_eq!(p.skipped[0].name, "done");
        let p = plan(
            &nodes,
            &PlanOptions {
                include_labelled: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&p), ["done", "node-9", "node-10", "cp-1"]);
    }

    #[test]
    fn an_explicit_order_is_kept_and_checked() {
        let nodes = [node("a", &[]), node("b", &[]), node("c", &[])];
        let order = |o: &[&str]| PlanOptions {
            order: o.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            names(&plan(&nodes, &order(&["c", "a"])).unwrap()),
            ["c", "a"]
        );
        assert!(plan(&nodes, &order(&["x"])).unwrap_err().contains("\"x\""));
        assert!(
            plan(&nodes, &order(&["a", "a"]))
                .unwrap_err()
                .contains("twice")
        );
    }
}
