//! The loop: node after node, step after step, the state written at every
//! transition, the gate obeyed.
use super::{
    context::{Context, now},
    record::{Moment, NodeRecord},
    rollback,
    state::{OnBreach, Phase, State, Step},
    steps::{self, Outcome},
    store::Store,
};
use crate::{Error, Result};

/// Steps that change the node: the loss at their end is recorded as the
/// loss during the migration (not gated: the soak is the gate).
const CHANGING: &[Step] = &[
    Step::Drain,
    Step::RestartCilium,
    Step::Reboot,
    Step::RestartLegacy,
];

/// Writes `state`; on a conflict (someone ran `abort`, or another driver
/// took over) reads it again and stops unless it is still running.
async fn save(store: &mut Store, state: &mut State) -> Result<()> {
    if store.save(state).await? {
        return Ok(());
    }
    let theirs = store
        .load()
        .await?
        .ok_or_else(|| Error::Migration("the migration's state ConfigMap was deleted".into()))?;
    if theirs.phase != Phase::Running {
        // Their phase (an abort), our progress: the step just finished
        // must not run again.
        state.phase = theirs.phase;
        let kept = store.save(state).await?;
        return Err(Error::Migration(format!(
            "stopped: the migration was changed from outside ({:?}){}",
            state.phase,
            if kept {
                ""
            } else {
                "; this driver's last step may run again on resume"
            }
        )));
    }
    // Same phase: keep our progress over theirs.
    if store.save(state).await? {
        Ok(())
    } else {
        Err(Error::Migration(
            "the state keeps changing under this driver: is another one running?".into(),
        ))
    }
}

/// Runs until every node is done, the gate closes or a step fails.
pub async fn run(ctx: &Context, store: &mut Store, state: &mut State) -> Result<()> {
    while let Some(i) = state.current() {
        ctx.check_lease()?;
        let node = state.nodes[i].name.clone();
        let step = state.nodes[i].step;
        if step == Step::RestartCilium && state.nodes[i].cilium_pod_deleted.is_none() {
            // Written before the delete: a driver dying right after it
            // must know the pod it finds is the replacement.
            let uid = steps::current_agent_uid(ctx, &node).await?;
            state.nodes[i].cilium_pod_deleted = Some(uid);
            save(store, state).await?;
        }
        let mut record = store.load_record(&node).await?;
        record.begin(step, &now());
        eprintln!("crossover: {node}: {step}...");
        ctx.event(&mut record, step.reason(), format!("{step} started"), false)
            .await;
        store.save_record(&record).await?;
        let cilium_pod = state.nodes[i].cilium_pod_deleted.clone();
        let decided = record.decisions;
        let outcome = steps::run(ctx, &node, step, cilium_pod.as_deref(), &mut record).await;
        // The step's gate decisions, in the state the agents export.
        state.gate = state.gate.plus(record.decisions.since(decided));
        match outcome {
            Ok(Outcome::Done(detail)) => {
                eprintln!("crossover: {node}: {step} done: {detail}");
                record.end(step, &now(), "ok", detail.clone());
                if CHANGING.contains(&step)
                    && let Ok((decision, rows)) = ctx.judge(&node).await
                {
                    record.read(Moment::During, step, decision, &rows);
                }
                let done = format!("{step} done: {detail}");
                ctx.event(&mut record, step.reason(), done, false).await;
                store.save_record(&record).await?;
                state.nodes[i].step = step.next();
                save(store, state).await?;
            }
            Ok(Outcome::Breach(decision)) => {
                let reasons = decision.reasons().join("\n  ");
                record.end(step, &now(), "breach", reasons.clone());
                store.save_record(&record).await?;
                let mut reason = format!("the gate closed at {step} of {node}:\n  {reasons}");
                if state.settings.on_breach == OnBreach::Rollback {
                    reason += &rollback_after_breach(ctx, state, &mut record).await;
                }
                return halt(ctx, store, state, &mut record, step, reason).await;
            }
            Err(e) => {
                record.end(step, &now(), "failed", e.to_string());
                record.errors.push(format!("{}: {step}: {e}", now()));
                let reason = format!("{step} of {node} failed: {e}");
                return halt(ctx, store, state, &mut record, step, reason).await;
            }
        }
    }
    state.phase = Phase::Done { at: now() };
    save(store, state).await
}

async fn rollback_after_breach(
    ctx: &Context,
    state: &mut State,
    record: &mut NodeRecord,
) -> String {
    let node = record.node.clone();
    eprintln!("crossover: {node}: rolling back (--on-breach rollback)");
    match rollback::rollback(ctx, record).await {
        Ok(detail) => {
            if let Some(n) = state.node_mut(&node) {
                n.step = Step::Baseline;
                n.cilium_pod_deleted = None;
            }
            format!("\nrolled back: {detail}")
        }
        Err(e) => format!("\nrollback FAILED: {e}"),
    }
}

async fn halt(
    ctx: &Context,
    store: &mut Store,
    state: &mut State,
    record: &mut NodeRecord,
    step: Step,
    reason: String,
) -> Result<()> {
    let node = record.node.clone();
    let node = node.as_str();
    ctx.event(record, "MigrationHalted", reason.clone(), true)
        .await;
    // Best effort: the halt matters more than its record.
    let _ = store.save_record(record).await;
    state.phase = Phase::Halted {
        node: node.into(),
        step,
        reason: reason.clone(),
        at: now(),
    };
    // A lost conflict here means someone aborted: their phase stands.
    let _ = save(store, state).await;
    Err(Error::Migration(format!(
        "halted: {reason}\nnode {node} is left as it is (cordoned unless rolled back). \
         `crossover migrate status` shows where; fix the cause and `crossover migrate resume`, \
         or `crossover migrate rollback {node}`"
    )))
}
