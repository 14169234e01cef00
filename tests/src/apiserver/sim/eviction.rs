//! PodDisruptionBudgets: the disruption controller's arithmetic, the PDB
//! status it keeps, and the eviction subresource that consults it, after
//! `pkg/controller/disruption` and `pkg/registry/core/pod/storage/eviction.go`.
//! The real eviction reads the PDB's status; this one recomputes it from
//! the pods at the moment of the request, as if the controller were never
//! behind, so a test never races a stale status.
use std::collections::BTreeSet;

use k8s_openapi::api::{core::v1::Pod, policy::v1::PodDisruptionBudget};
use serde_json::{Value, json};

use super::{
    super::{
        kinds::Gvr,
        status::{self, ApiError},
        store::Store,
        subresource::SubresourceRequest,
    },
    world::{self, World},
};

/// What `status` of a PDB says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub expected_pods: i32,
    pub desired_healthy: i32,
    pub current_healthy: i32,
    pub disruptions_allowed: i32,
}

/// The PDB's selector against a pod: policy/v1 reads an empty selector as
/// every pod of the namespace, and a missing one as none.
fn selects(pdb: &Value, pod: &Value) -> bool {
    world::namespace_of(pdb) == world::namespace_of(pod)
        && pdb["spec"]["selector"].is_object()
        && world::selector_matches(&pdb["spec"]["selector"], pod)
}

/// An IntOrString as an absolute number of `total`; percentages round up,
/// as `GetScaledValueFromIntOrPercent(.., true)` does for both fields.
pub(crate) fn scaled(v: &Value, total: i32) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return Some(n as i32);
    }
    let percent: i64 = v.as_str()?.strip_suffix('%')?.parse().ok()?;
    Some(((percent * i64::from(total) + 99) / 100) as i32)
}

/// The budget of `pdb` over the cluster's pods now, as the disruption
/// controller would write it into the PDB's status.
pub fn budget(store: &Store, pdb: &Value) -> Budget {
    compute(pdb, &World::read(store))
}

fn compute(pdb: &Value, world: &World) -> Budget {
    let pods: Vec<&Value> = world
        .pods
        .iter()
        .filter(|p| !world::pod_terminal(p) && selects(pdb, p))
        .collect();
    let current_healthy = pods.iter().filter(|p| world::pod_ready(p)).count() as i32;
    let (min, max) = (&pdb["spec"]["minAvailable"], &pdb["spec"]["maxUnavailable"]);
    // The pods' controllers' scale, each controller counted once; a pod
    // without a known controller counts for itself.
    let scale = || -> i32 {
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for pod in &pods {
            let Some((kind, name)) = world::controller_of(pod) else {
                total += 1;
                continue;
            };
            if !seen.insert((kind, name)) {
                continue;
            }
            let ns = world::namespace_of(pod);
            let find = |list: &[Value]| {
                list.iter()
                    .find(|o| world::name(o) == name && world::namespace_of(o) == ns)
                    .cloned()
            };
            total += match kind {
                "ReplicaSet" => find(&world.replicasets)
                    .map(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(1) as i32),
                "DaemonSet" => find(&world.daemonsets)
                    .map(|ds| ds["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0) as i32),
                _ => None,
            }
            .unwrap_or(1);
        }
        total
    };
    let (expected_pods, desired_healthy) = if !max.is_null() {
        let expected = scale();
        let max = scaled(max, expected).unwrap_or(0);
        (expected, (expected - max).max(0))
    } else if min.is_i64() {
        (pods.len() as i32, min.as_i64().unwrap_or(0) as i32)
    } else if !min.is_null() {
        let expected = scale();
        (expected, scaled(min, expected).unwrap_or(0))
    } else {
        (0, 0)
    };
    Budget {
        expected_pods,
        desired_healthy,
        current_healthy,
        disruptions_allowed: (current_healthy - desired_healthy).max(0),
    }
}

/// Writes every PDB's status where it changed; whether anything was written.
pub(crate) fn sync_status(store: &Store, world: &World) -> bool {
    let gvr = Gvr::of::<PodDisruptionBudget>();
    let mut wrote = false;
    for pdb in &world.pdbs {
        let b = compute(pdb, world);
        let generation = pdb["metadata"]["generation"].clone();
        let old = &pdb["status"];
        let same = old["observedGeneration"] == generation
            && old["expectedPods"] == b.expected_pods
            && old["desiredHealthy"] == b.desired_healthy
            && old["currentHealthy"] == b.current_healthy
            && old["disruptionsAllowed"] == b.disruptions_allowed;
        if same {
            continue;
        }
        let written = store.mutate(
            &gvr,
            Some(world::namespace_of(pdb)),
            world::name(pdb),
            false,
            |cur| {
                let mut pdb = cur.cloned().ok_or_else(|| ApiError::not_found(&gvr, ""))?;
                let status = &mut pdb["status"];
                if !status.is_object() {
                    *status = json!({});
                }
                status["observedGeneration"] = generation.clone();
                status["expectedPods"] = json!(b.expected_pods);
                status["desiredHealthy"] = json!(b.desired_healthy);
                status["currentHealthy"] = json!(b.current_healthy);
                status["disruptionsAllowed"] = json!(b.disruptions_allowed);
                let allowed = b.disruptions_allowed > 0;
                let reason = if allowed {
                    "SufficientPods"
                } else {
                    "InsufficientPods"
                };
                world::set_condition(&mut pdb, "DisruptionAllowed", allowed, Some(reason));
                Ok(Some(pdb))
            },
        );
        wrote |= written.is_ok();
    }
    wrote
}

/// The real refusal: 429 TooManyRequests with a `DisruptionBudget` cause.
fn refusal(pdb: &Value, b: &Budget) -> ApiError {
    ApiError::too_many_requests("Cannot evict pod as it would violate the pod's disruption budget.")
        .with_cause(
            "DisruptionBudget",
            format!(
                "The disruption budget {} needs {} healthy pods and has {} currently",
                world::name(pdb),
                b.desired_healthy,
                b.current_healthy
            ),
        )
}

/// `POST pods/{name}/eviction` honouring PodDisruptionBudgets: 404 for a
/// missing pod; a pod that is Pending, terminal or already going is
/// deleted whatever the budget; 500 when more than one PDB selects it;
/// 429 when its PDB allows no disruption (an unready pod under the
/// default `IfHealthyBudget` policy may go while the budget is met);
/// otherwise the pod is deleted and the answer is 201.
pub fn evict_with_budgets(
    store: &Store,
    req: &SubresourceRequest,
) -> Result<(u16, Value), ApiError> {
    if req.method != "POST" {
        return Err(ApiError::method_not_allowed(&req.method));
    }
    let pods = Gvr::of::<Pod>();
    let ns = req.namespace.as_deref();
    let pod = store
        .get(&pods, ns, &req.name)
        .ok_or_else(|| ApiError::not_found(&pods, &req.name))?;
    let ignores_budget = matches!(
        pod["status"]["phase"].as_str(),
        Some("Pending" | "Succeeded" | "Failed")
    ) || !pod["metadata"]["deletionTimestamp"].is_null();
    if !ignores_budget {
        let world = World::read(store);
        let pdbs: Vec<&Value> = world.pdbs.iter().filter(|p| selects(p, &pod)).collect();
        if pdbs.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = pdbs.first() {
            let b = compute(pdb, &world);
            let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
            let allowed = if world::pod_ready(&pod) {
                b.disruptions_allowed > 0
            } else {
                always || b.current_healthy >= b.desired_healthy
            };
            if !allowed {
                return Err(refusal(pdb, &b));
            }
        }
    }
    // The uid precondition: the pod judged is the pod deleted.
    let uid = world::uid(&pod).to_string();
    store.mutate(&pods, ns, &req.name, req.dry_run, |cur| match cur {
        Some(p) if world::uid(p) == uid => Ok(None),
        Some(_) => Err(ApiError::conflict(&pods, &req.name)),
        None => Err(ApiError::not_found(&pods, &req.name)),
    })?;
    Ok((201, status::success(201, Some((&pods, &req.name)))))
}
