//! Putting a node back on the legacy CNI: the label removed, the Cilium
//! agent restarted (it then leaves the CNI configuration to the legacy
//! plugin), pods restarted onto legacy addresses, the node uncordoned and
//! no longer annotated as migrating.
//! Each part is idempotent, so a rollback interrupted is run again whole.
use super::{
    context::{Context, now},
    record::{Moment, NodeRecord, RollbackRecord},
    state::Step,
    steps::{self, Towards},
};
use crate::Result;

pub async fn rollback(ctx: &Context, record: &mut NodeRecord) -> Result<String> {
    let node = record.node.clone();
    let node = node.as_str();
    ctx.event(record, "MigrationRollback", "rollback started".into(), true)
        .await;
    let started = now();
    let result = undo(ctx, node).await;
    let (outcome, detail) = match &result {
        Ok(d) => ("ok", d.clone()),
        Err(e) => ("failed", e.to_string()),
    };
    record.rollbacks.push(RollbackRecord {
        started,
        ended: now(),
        outcome: outcome.into(),
        detail: detail.clone(),
    });
    if let Ok((decision, rows)) = ctx.judge(node).await {
        record.read(Moment::RolledBack, Step::Uncordon, decision, &rows);
    }
    let note = format!("{outcome}: {detail}");
    ctx.event(record, "MigrationRolledBack", note, true).await;
    result
}

async fn undo(ctx: &Context, node: &str) -> Result<String> {
    // Nothing may land on the node while its CNI changes back.
    steps::cordon(ctx, node, true).await?;
    steps::set_label(ctx, node, false).await?;
    let agent = steps::restart_agent(ctx, node, None).await?;
    let pods = steps::restart_on(ctx, node, Towards::Legacy).await?;
    steps::cordon(ctx, node, false).await?;
    steps::set_migrating(ctx, node, false).await?;
    Ok(format!("label removed; {agent}; {pods}; uncordoned"))
}
