//! The optional reboot: the SRE's hook command does it (`ssh`, a cloud
//! CLI, `docker restart` on kind), then the node and its Cilium agent must
//! be Ready again. Without a hook the step is skipped.
use std::process::Stdio;

use tokio::process::Command;

use crate::{
    Error, Result,
    migrate::{context::Context, pods},
};

pub async fn reboot(ctx: &Context, node: &str) -> Result<String> {
    let Some(hook) = ctx.settings.reboot_hook.clone() else {
        return Ok("skipped: no --reboot-hook".into());
    };
    // A driver that died during the hook runs it again on resume: a
    // second reboot costs time, never correctness.
    let mut child = Command::new("sh")
        .args(["-c", &hook])
        .env("NODE", node)
        .env("CROSSOVER_NODE", node)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Migration(format!("running --reboot-hook {hook:?}: {e}")))?;
    let status = tokio::time::timeout(ctx.options.hook_timeout, child.wait())
        .await
        .map_err(|_| {
            Error::Migration(format!(
                "--reboot-hook {hook:?} for {node} did not finish within {}s",
                ctx.options.hook_timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::Migration(format!("waiting for --reboot-hook {hook:?}: {e}")))?;
    if !status.success() {
        return Err(Error::Migration(format!(
            "--reboot-hook {hook:?} for {node} failed: {status}"
        )));
    }
    let what = format!("node {node} and its Cilium agent Ready after the reboot");
    pods::wait_for(ctx, ctx.options.ready_timeout, &what, || async {
        if !pods::node_ready(&pods::get_node(ctx, node).await?) {
            return Ok(Err("node not Ready".to_string()));
        }
        Ok(match pods::cilium_agent(ctx, node).await? {
            Some(p) if pods::is_ready(&p) => Ok(()),
            _ => Err("Cilium agent not Ready".to_string()),
        })
    })
    .await?;
    Ok(format!("rebooted by {hook:?}; node and Cilium agent Ready"))
}
