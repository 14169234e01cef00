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
        /// The agent's --pin-path, e.g. /sys/fs/bpf/crossover.
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every subcommand, at any depth, says what it is
    /// for in `--help` (clap's own --help and --version aside).
    #[test]
    fn every_flag_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if ["help", "version"].contains(&id) || arg.is_hide_set() {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in command.get_subcommands() {
                if sub
                    .get_about()
                    .is_none_or(|a| a.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "crossover", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
        // It can fail: an argument without help is found.
        let bare = clap::Command::new("x").arg(clap::Arg::new("quiet").long("quiet"));
        let mut found = Vec::new();
        walk(&bare, "x", &mut found);
        assert_eq!(found, ["x --quiet"]);
    }
}
