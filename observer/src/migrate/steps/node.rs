//! Changes to the Node object: cordon, uncordon, the migration label, the
//! annotation that makes every agent probe the node steadily. Merge
//! patches of one field each, so re-running them is harmless.
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    Result,
    cluster::MIGRATING_ANNOTATION,
    migrate::{MIGRATION_LABEL, context::Context, store::kube_err},
};

/// `kubectl cordon` (`true`) or `kubectl uncordon` (`false`).
pub async fn cordon(ctx: &Context, node: &str, cordoned: bool) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    // Uncordoning removes the field, as kubectl does.
    let value = if cordoned { json!(true) } else { json!(null) };
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "unschedulable": value } })),
    )
    .await
    .map_err(kube_err(format!("patching node {node} spec.unschedulable")))?;
    Ok(if cordoned { "cordoned" } else { "uncordoned" }.into())
}

/// Sets (`true`) or removes (`false`) `io.cilium.migration/cilium-default`:
/// the CiliumNodeConfig's selector, which turns Cilium into the node's CNI
/// at the agent's next start.
pub async fn set_label(ctx: &Context, node: &str, on: bool) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let value = if on { json!("true") } else { json!(null) };
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { MIGRATION_LABEL: value } } })),
    )
    .await
    .map_err(kube_err(format!("labelling node {node}")))?;
    Ok(if on {
        format!("labelled {MIGRATION_LABEL}=true")
    } else {
        format!("label {MIGRATION_LABEL} removed")
    })
}

/// Sets (`true`) or removes (`false`) `crossover.io/migrating`: while it
/// is there, every agent probes the node on both overlays steadily (the
/// probe mesh's focus), so a blackhole between it and any peer shows
/// within seconds.
pub async fn set_migrating(ctx: &Context, node: &str, on: bool) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let value = if on { json!("true") } else { json!(null) };
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { MIGRATING_ANNOTATION: value } } })),
    )
    .await
    .map_err(kube_err(format!("annotating node {node}")))?;
    Ok(if on {
        format!("annotated {MIGRATING_ANNOTATION}=true")
    } else {
        format!("annotation {MIGRATING_ANNOTATION} removed")
    })
}
