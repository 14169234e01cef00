//! Windows of measured loss: the baseline before a node is touched and
//! the soak after, where the gate decides.
use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use crate::{
    Result,
    migrate::{
        context::Context,
        record::{Moment, NodeRecord},
        state::Step,
    },
};

/// Readings in a row that must miss a pair before the gate closes for it:
/// one failed HTTP read of a busy agent is not a network problem; an agent
/// gone for three readings is.
const MISSING_READINGS: u32 = 3;

/// Judges the cluster every gate interval for `seconds` (at least once);
/// the first closed gate ends it.
async fn hold(
    ctx: &Context,
    node: &str,
    seconds: u64,
    moment: Moment,
    step: Step,
    record: &mut NodeRecord,
) -> Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut judged = 0u32;
    let mut missing_in_a_row = 0u32;
    loop {
        ctx.check_lease()?;
        let (decision, rows) = ctx.judge(node).await?;
        judged += 1;
        let only_missing =
            !decision.passed && decision.breaches.is_empty() && decision.stuck.is_empty();
        missing_in_a_row = if only_missing {
            missing_in_a_row + 1
        } else {
            0
        };
        if only_missing && missing_in_a_row < MISSING_READINGS {
            tokio::time::sleep(ctx.options.gate_interval).await;
            continue;
        }
        let passed = decision.passed;
        let summary = decision.summary();
        let last = Instant::now() >= deadline;
        if !passed || last {
            record.read(moment, step, decision.clone(), &rows);
        }
        if !passed {
            return Ok(Outcome::Breach(decision));
        }
        if last {
            return Ok(Outcome::Done(format!(
                "{} over {seconds}s: {summary}",
                crate::migrate::count(judged as usize, "reading")
            )));
        }
        tokio::time::sleep(ctx.options.gate_interval).await;
    }
}

/// Waits one agent window, so that what is judged next was measured
/// after this moment: after a node's changes, or after a fault was fixed
/// and the migration resumed.
async fn settle(ctx: &Context) -> Result<()> {
    let until = Instant::now() + ctx.options.read.window.min(Duration::from_secs(600));
    while Instant::now() < until {
        ctx.check_lease()?;
        tokio::time::sleep(ctx.options.poll.min(until - Instant::now())).await;
    }
    Ok(())
}

/// A full window before the node is touched, then `--baseline` of gate.
pub async fn baseline(ctx: &Context, node: &str, record: &mut NodeRecord) -> Result<Outcome> {
    settle(ctx).await?;
    let seconds = ctx.settings.baseline_seconds;
    hold(ctx, node, seconds, Moment::Before, Step::Baseline, record).await
}

/// What the window held when the soak began is recorded as the loss
/// during the changes; then a window passes before the gate judges.
pub async fn soak(ctx: &Context, node: &str, record: &mut NodeRecord) -> Result<Outcome> {
    let (during, rows) = ctx.judge(node).await?;
    record.read(Moment::During, Step::Soak, during, &rows);
    settle(ctx).await?;
    let seconds = ctx.settings.soak_seconds;
    hold(ctx, node, seconds, Moment::After, Step::Soak, record).await
}
