//! Windows of measured loss: the baseline before a node is touched and
//! the soak after, where the gate decides.
use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;
use crate::{
    Result,
    migrate::{
        analysis::Analysis,
        context::Context,
        gate::{Decision, Verdict},
        record::{Moment, NodeRecord},
        state::Step,
    },
};

/// Readings in a row that must miss a pair before the gate closes for it:
/// one failed HTTP read of a busy agent is not a network problem; an agent
/// gone for three readings is.
const MISSING_READINGS: u32 = 3;

/// Judges the cluster every gate interval for `seconds` (at least once),
/// each reading weighed by the policy's analysis and recorded; the first
/// closed gate ends it. A hold does not end on a pending breach: it goes
/// on until the breach holds (a halt) or clears, for at most
/// `consecutive` windows more; a breach still pending then closes it.
async fn hold(
    ctx: &Context,
    node: &str,
    seconds: u64,
    moment: Moment,
    step: Step,
    record: &mut NodeRecord,
) -> Result<Outcome> {
    let policy = ctx.settings.policy;
    let window = ctx.window();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let extended = deadline + window * policy.consecutive + ctx.options.gate_interval;
    let mut analysis = Analysis::new(policy, window);
    let mut judged = 0u32;
    let mut missing_in_a_row = 0u32;
    let mut judged_end = None;
    loop {
        ctx.check_lease()?;
        let (decision, rows) = ctx.judge(node).await?;
        // The window the last reading judged, again (Prometheus' records
        // change once an evaluation; a gate interval shorter than the
        // agents' tick): nothing new to judge or count.
        if decision.window_end_ms != 0 && judged_end == Some(decision.window_end_ms) {
            tokio::time::sleep(ctx.options.gate_interval).await;
            continue;
        }
        judged_end = Some(decision.window_end_ms);
        let mut decision = analysis.weigh(decision, started.elapsed());
        judged += 1;
        let only_missing = !decision.passed && decision.verdict != Some(Verdict::Halt);
        missing_in_a_row = if only_missing {
            missing_in_a_row + 1
        } else {
            0
        };
        let now = Instant::now();
        // Agents missing too long, or breaches still pending when the
        // extension ran out (new ones kept appearing): the gate closes.
        if missing_in_a_row >= MISSING_READINGS || analysis.is_pending() && now >= extended {
            decision.passed = false;
            decision.verdict = Some(Verdict::Halt);
        }
        record.decide(moment, step, policy.consecutive, &decision);
        let left = deadline.saturating_duration_since(now).as_secs();
        eprintln!(
            "crossover: {node}: {step} reading {judged} ({left}s left): {}: {}",
            verdict_word(decision.verdict),
            progress(&decision, policy.consecutive)
        );
        if only_missing && missing_in_a_row < MISSING_READINGS {
            tokio::time::sleep(ctx.options.gate_interval).await;
            continue;
        }
        let passed = decision.passed;
        let summary = decision.summary();
        let last = now >= deadline && !analysis.is_pending();
        if !passed || last {
            record.read(moment, step, decision.clone(), &rows);
        }
        if !passed {
            return Ok(Outcome::Breach(decision));
        }
        if last {
            return Ok(Outcome::Done(format!(
                "{} over {}s: {summary}",
                crate::migrate::count(judged as usize, "reading"),
                started.elapsed().as_secs()
            )));
        }
        tokio::time::sleep(ctx.options.gate_interval).await;
    }
}

fn verdict_word(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::Pass) | None => "pass",
        Some(Verdict::Pending) => "pending",
        Some(Verdict::Halt) => "halt",
    }
}

/// One line: the worst breach with how long it held, or the worst ratios.
fn progress(decision: &Decision, consecutive: u32) -> String {
    match decision.breaches.first() {
        Some(b) if !b.over_ceiling => format!(
            "{b} (the gate closes at {consecutive}){}",
            match decision.breaches.len() + decision.more_breaches {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            }
        ),
        Some(b) => b.to_string(),
        None => decision.summary(),
    }
}

/// Waits one window (and, from Prometheus, an evaluation of the rules),
/// so that what is judged next was measured after this moment: after a
/// node's changes, or after a fault was fixed and the migration resumed.
async fn settle(ctx: &Context) -> Result<()> {
    let until = Instant::now() + ctx.settle_time().min(Duration::from_secs(600));
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
