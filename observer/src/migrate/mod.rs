//! `crossover migrate`: walks Cilium's documented live migration node by
//! node over the cluster's API, and steps forward only while the loss the
//! agents measure stays under the threshold.
pub mod analysis;
mod args;
mod context;
mod driver;
mod finish;
pub mod gate;
mod lease;
mod measure;
pub mod plan;
mod pods;
pub mod preflight;
pub mod record;
pub mod report;
mod rollback;
pub mod state;
mod steps;
mod store;

use std::io::{BufRead, IsTerminal, Write};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, api::ListParams};

pub use args::{MigrateArgs, MigrateCommand, ReportArgs};
use context::{Context, Options, now};
use lease::Lease;
use measure::Measured;
use state::{Phase, State};
pub use store::decode_state;
use store::{Store, kube_err};

use crate::{Error, Result};

/// The label the migration's CiliumNodeConfig selects.
pub const MIGRATION_LABEL: &str = "io.cilium.migration/cilium-default";

pub async fn run(args: MigrateArgs) -> Result<()> {
    // The driver decides itself how to wait on a disruption budget; kube's
    // own retry of 429 would hide it for minutes.
    let client = crate::cluster::client(args.common.kubeconfig.as_ref(), false).await?;
    let mut store = Store::new(&client, &args.common.namespace, &args.common.name);
    let credentials =
        crate::cluster::reader_credentials(args.common.kubeconfig.as_ref(), true).await?;
    let options = || Options {
        agent_credentials: credentials.clone(),
        ..args.common.options()
    };
    match &args.command {
        MigrateCommand::Plan(run) => {
            let plan = plan_nodes(&client, run).await?;
            print!("{}", plan.render());
            let ctx = Context::new(client, options(), run.settings()?, None);
            ctx.check_source().await?;
            if preflight_passes(&ctx, &run.preflight_options(&args.common)).await? {
                Ok(())
            } else {
                Err(Error::Migration(
                    "preflight failed: see the checks above".into(),
                ))
            }
        }
        MigrateCommand::Run(run) => {
            if let Some(existing) = store.load().await? {
                return Err(Error::Migration(format!(
                    "a migration already exists (ConfigMap {}/{}, {}): `status` shows it, \
                     `resume` continues it",
                    args.common.namespace,
                    args.common.name,
                    phase_word(&existing.phase)
                )));
            }
            let plan = plan_nodes(&client, run).await?;
            print!("{}", plan.render());
            let settings = run.settings()?;
            let lease = take_lease(&client, &args).await?;
            let ctx = Context::new(client, options(), settings.clone(), Some(lease));
            if let Err(e) = ctx.check_source().await {
                release(ctx).await;
                return Err(e);
            }
            if !preflight_passes(&ctx, &run.preflight_options(&args.common)).await? {
                release(ctx).await;
                return Err(Error::Migration(
                    "preflight failed: nothing was changed; fix what it names and run again".into(),
                ));
            }
            if !confirm(
                run.yes,
                &format!(
                    "This cordons, drains, relabels and restarts the Cilium agent of {} nodes, \
                     one at a time.",
                    plan.nodes.len()
                ),
            )? {
                release(ctx).await;
                return Err(Error::Migration(
                    "not confirmed: nothing was changed".into(),
                ));
            }
            let mut state = State::new(&plan, settings, now());
            store.create(&state).await?;
            drive(ctx, &mut store, &mut state).await
        }
        MigrateCommand::Resume(resume) => {
            let mut state = load(&mut store, &args).await?;
            if matches!(state.phase, Phase::Done { .. }) {
                println!("{}", state.render());
                return Ok(());
            }
            let lease = take_lease(&client, &args).await?;
            // The settings that judged the first nodes judge the rest.
            let ctx = Context::new(client, options(), state.settings.clone(), Some(lease));
            if let Err(e) = ctx.check_source().await {
                release(ctx).await;
                return Err(e);
            }
            print!("{}", state.render());
            if !confirm(resume.yes, "This continues the migration where it stopped.")? {
                release(ctx).await;
                return Err(Error::Migration(
                    "not confirmed: nothing was changed".into(),
                ));
            }
            state.phase = Phase::Running;
            if !store.save(&state).await? {
                release(ctx).await;
                return Err(Error::Migration(
                    "the state changed while resuming: run `resume` again".into(),
                ));
            }
            drive(ctx, &mut store, &mut state).await
        }
        MigrateCommand::Status { format } => {
            let state = load(&mut store, &args).await?;
            match format {
                args::Format::Json => println!("{}", to_json(&state)?),
                _ => {
                    print!("{}", state.render());
                    if matches!(state.phase, Phase::Done { .. }) {
                        print!(
                            "{}",
                            finish::leftovers(&client, &args.common.options()).await?
                        );
                    }
                }
            }
            Ok(())
        }
        MigrateCommand::Abort { yes } => {
            let mut state = load(&mut store, &args).await?;
            if !confirm(
                *yes,
                "This stops the running driver at its next step; nodes stay as they are.",
            )? {
                return Err(Error::Migration(
                    "not confirmed: nothing was changed".into(),
                ));
            }
            state.phase = Phase::Aborted { at: now() };
            // Retry over the running driver's own writes.
            for _ in 0..5 {
                if store.save(&state).await? {
                    println!("aborted: `crossover migrate resume` continues, `status` shows where");
                    return Ok(());
                }
                let fresh = load(&mut store, &args).await?;
                state = State {
                    phase: Phase::Aborted { at: now() },
                    ..fresh
                };
            }
            Err(Error::Migration(
                "the state kept changing: run `abort` again".into(),
            ))
        }
        MigrateCommand::Rollback { node, yes } => {
            let mut state = store.load().await?;
            let lease = take_lease(&client, &args).await?;
            let settings = match &state {
                Some(s) => s.settings.clone(),
                None => args::RunArgs::default_settings(),
            };
            let ctx = Context::new(client, options(), settings, Some(lease));
            pods::get_node(&ctx, node).await?;
            if !confirm(
                *yes,
                &format!(
                    "This puts {node} back on the legacy CNI: cordon, remove {MIGRATION_LABEL}, \
                     restart its Cilium agent and its pods, uncordon."
                ),
            )? {
                release(ctx).await;
                return Err(Error::Migration(
                    "not confirmed: nothing was changed".into(),
                ));
            }
            let mut record = store.load_record(node).await?;
            let result = rollback::rollback(&ctx, &mut record).await;
            store.save_record(&record).await?;
            if let (Ok(_), Some(state)) = (&result, state.as_mut())
                && let Some(n) = state.node_mut(node)
            {
                // Migrated again from the start when the migration resumes.
                n.step = state::Step::Baseline;
                n.cilium_pod_deleted = None;
                store.save(state).await?;
            }
            release(ctx).await;
            result.map(|detail| println!("{node} rolled back: {detail}"))
        }
    }
}

async fn drive(ctx: Context, store: &mut Store, state: &mut State) -> Result<()> {
    let result = driver::run(&ctx, store, state).await;
    if result.is_ok() {
        print!("{}", state.render());
        print!("{}", finish::leftovers(&ctx.client, &ctx.options).await?);
    }
    release(ctx).await;
    result
}

async fn release(ctx: Context) {
    if let Some(lease) = ctx.lease {
        lease.release().await;
    }
}

async fn load(store: &mut Store, args: &MigrateArgs) -> Result<State> {
    store.load().await?.ok_or_else(|| {
        Error::Migration(format!(
            "no migration found (ConfigMap {}/{}): `crossover migrate run` starts one",
            args.common.namespace, args.common.name
        ))
    })
}

async fn take_lease(client: &Client, args: &MigrateArgs) -> Result<Lease> {
    let holder = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "crossover".into()),
        std::process::id()
    );
    Lease::acquire(
        client,
        &args.common.namespace,
        &args.common.name,
        &holder,
        args.common.lease_duration,
        // Long enough to outlast a crashed driver's lease, no longer.
        args.common.lease_duration * 2,
    )
    .await
}

async fn plan_nodes(client: &Client, run: &args::RunArgs) -> Result<plan::Plan> {
    let api: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default();
    if let Some(selector) = &run.selector {
        params = params.labels(selector);
    }
    let nodes = api
        .list(&params)
        .await
        .map_err(kube_err("listing nodes"))?
        .items;
    let plan = plan::plan(&nodes, &run.plan_options()).map_err(Error::Migration)?;
    if plan.nodes.is_empty() {
        return Err(Error::Migration(
            "no node to migrate (all selected nodes carry the migration label?)".into(),
        ));
    }
    Ok(plan)
}

/// Prints the preflight checks, the baseline loss among them; `false`
/// when one fails.
async fn preflight_passes(ctx: &Context, options: &preflight::PreflightOptions) -> Result<bool> {
    let mut facts = preflight::gather(&ctx.client, options).await?;
    let measured = ctx.measure(None).await;
    // Hooks only the agents can name: asked of them when the baseline
    // came from Prometheus.
    let hooks = match &measured {
        Ok(Measured {
            hooks: Some(hooks), ..
        }) => Ok(hooks.clone()),
        _ => ctx
            .measure_agents(None)
            .await
            .map(|m| m.hooks.unwrap_or_default()),
    };
    facts.hooks = match hooks {
        Ok((answered, blind)) => preflight::AgentHooks::Read { answered, blind },
        Err(e) => preflight::AgentHooks::NotRead(e.to_string()),
    };
    let baseline = match measured {
        Ok(m) => {
            let d = gate::judge(
                &ctx.settings.thresholds,
                gate::GateScope::All,
                None,
                &m.rows,
                m.missing,
                vec![],
                now(),
            );
            if d.passed {
                preflight::Baseline::Under {
                    summary: d.summary(),
                }
            } else {
                preflight::Baseline::Over {
                    breaches: d.reasons(),
                }
            }
        }
        Err(e) => preflight::Baseline::NotMeasured(e.to_string()),
    };
    let checks = preflight::checks(&facts, &baseline);
    print!("{}", preflight::render(&checks));
    Ok(!preflight::blocking(&checks))
}

/// `1 reading`, `3 readings`: counts in messages and reports.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn phase_word(phase: &Phase) -> &'static str {
    match phase {
        Phase::Running => "running or crashed",
        Phase::Halted { .. } => "halted",
        Phase::Aborted { .. } => "aborted",
        Phase::Done { .. } => "done",
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Migration(format!("encoding JSON: {e}")))
}

/// `--yes`, or a typed "yes" on a terminal. Without a terminal and
/// without `--yes`, nothing destructive happens.
fn confirm(yes: bool, what: &str) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("crossover: {what}\ncrossover: pass --yes to confirm (stdin is not a terminal)");
        return Ok(false);
    }
    eprint!("{what}\nType yes to go on: ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("reading the confirmation", e))?;
    Ok(answer.trim() == "yes")
}

/// `crossover report`.
pub async fn report(args: ReportArgs) -> Result<()> {
    let client = crate::cluster::client(args.kubeconfig.as_ref(), true).await?;
    let mut store = Store::new(&client, &args.namespace, &args.name);
    let state = store.load().await?.ok_or_else(|| {
        Error::Migration(format!(
            "no migration found (ConfigMap {}/{})",
            args.namespace, args.name
        ))
    })?;
    let records = store.records().await?;
    // What the guide still asks, once every node is done.
    let leftovers = match state.phase {
        Phase::Done { .. } => Some(finish::find(&client, &args.cilium_namespace).await?),
        _ => None,
    };
    let cluster = crate::cluster::describe(args.kubeconfig.as_ref());
    let about = report::About::here(cluster, leftovers);
    let report = report::Report::new(about, state, records);
    match args.format {
        args::ReportFormat::Json => println!(
            "{}",
            report
                .json()
                .map_err(|e| Error::Migration(format!("encoding JSON: {e}")))?
        ),
        args::ReportFormat::Markdown => print!("{}", report.markdown()),
        args::ReportFormat::Html => print!("{}", report.html()),
    }
    Ok(())
}
