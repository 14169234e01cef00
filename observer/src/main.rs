use clap::{Parser, Subcommand};
use observer::cli::observe::{self, ObserveArgs};

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
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Observe(args) => observe::run(args).await,
    };
    if let Err(err) = result {
        eprintln!("crossover: error: {err}");
        std::process::exit(1);
    }
}
