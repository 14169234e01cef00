//! The steps of one node, each idempotent: run again after a crash, a
//! step finds the work it already did and does only the rest.
mod cilium;
mod drain;
mod hold;
mod legacy;
mod node;
mod reboot;
mod verify;

pub use cilium::{current_agent_uid, restart_agent};
pub use legacy::{Towards, restart_on};
pub use node::{cordon, set_label, set_migrating};

use super::{context::Context, gate::Decision, record::NodeRecord, state::Step};
use crate::Result;

/// How a step ended, when it did not fail.
pub enum Outcome {
    /// Go on; the detail is recorded and put in the node's Event.
    Done(String),
    /// The gate closed.
    Breach(Decision),
}

/// Runs `step` on `node`. `cilium_pod` is the agent pod UID the driver
/// wrote down before `restart_cilium` deletes it. Every step up to the
/// soak first makes sure the node is annotated as migrating (the agents'
/// focus: a resumed migration, or one a driver without the annotation
/// started, gets it too); the uncordon, the node's last, removes it.
pub async fn run(
    ctx: &Context,
    node: &str,
    step: Step,
    cilium_pod: Option<&str>,
    record: &mut NodeRecord,
) -> Result<Outcome> {
    if !matches!(step, Step::Uncordon | Step::Done) {
        node::set_migrating(ctx, node, true).await?;
    }
    match step {
        Step::Baseline => hold::baseline(ctx, node, record).await,
        Step::Cordon => node::cordon(ctx, node, true).await.map(Outcome::Done),
        Step::Drain => drain::drain(ctx, node).await.map(Outcome::Done),
        Step::Label => node::set_label(ctx, node, true).await.map(Outcome::Done),
        Step::RestartCilium => cilium::restart_agent(ctx, node, cilium_pod)
            .await
            .map(Outcome::Done),
        Step::Reboot => reboot::reboot(ctx, node).await.map(Outcome::Done),
        Step::RestartLegacy => legacy::restart_on(ctx, node, legacy::Towards::Cilium)
            .await
            .map(Outcome::Done),
        Step::Verify => verify::verify(ctx, node).await.map(Outcome::Done),
        Step::Soak => hold::soak(ctx, node, record).await,
        Step::Uncordon => {
            let uncordoned = node::cordon(ctx, node, false).await?;
            node::set_migrating(ctx, node, false).await?;
            Ok(Outcome::Done(uncordoned))
        }
        Step::Done => Ok(Outcome::Done(String::new())),
    }
}
