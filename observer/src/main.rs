use clap::{Parser, Subcommand};
use observer::{
    agent::{self, AgentArgs},
    cli::{
        loss::{self, LossArgs},
        observe::{self, ObserveArgs},
    },
    migrate::{self, MigrateArgs, ReportArgs},
    probe::{self, ProbeArgs},
};

/// crossover: per node pair and per overlay, what a live CNI migration to
/// Cilium is losing.
#[derive(Debug, Parser)]
#[command(name = "crossover", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach to interfaces of this node and print flows and counters.
    Observe(ObserveArgs),
    /// Run on every node: attach, follow, serve /metrics and /api/v1.
    Agent(Box<AgentArgs>),
    /// Ask every agent and print the merged loss matrix (exit 2: incomplete).
    Loss(LossArgs),
    /// Remove what an agent with --pin-path left on this node: its TCX
    /// links (detaching the programs) and pinned maps (docs/restarts.md).
    Uninstall {
        #[arg(long)]
        pin_path: std::path::PathBuf,
    },
    /// Migrate the cluster to Cilium node by node, behind the loss gate.
    Migrate(Box<MigrateArgs>),
    /// The migration's report: steps, loss before, during and after.
    Report(ReportArgs),
    /// Answer probes only (UDP echo, TCP accept): the probe DaemonSet's pods.
    Probe(ProbeArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Observe(args) => observe::run(args).await,
        Command::Agent(args) => agent::run(*args).await,
        Command::Probe(args) => probe::run(args).await,
        Command::Migrate(args) => migrate::run(*args).await,
        Command::Report(args) => migrate::report(args).await,
        Command::Loss(args) => loss::run(args).await.map(|code| {
            if code != 0 {
                std::process::exit(code)
            }
        }),
        Command::Uninstall { pin_path } => observer::datapath::uninstall(&pin_path).map(|done| {
            eprintln!(
                "crossover: removed {} links and {} maps pinned in {}",
                done.links.len(),
                done.maps.len(),
                pin_path.display()
            )
        }),
    };
    if let Err(err) = result {
        eprintln!("crossover: error: {err}");
        std::process::exit(1);
    }
}
