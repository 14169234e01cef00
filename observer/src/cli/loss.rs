//! `crossover loss`: asks every agent for its underlay counters and prints
//! the loss matrix, node pair by node pair and overlay by overlay, over a
//! window: two readings of every agent, `--window` seconds apart.
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::{
    Error, Result,
    agent::api,
    delivery::{self, Delivery},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LossFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct LossArgs {
    /// An agent's base URL, e.g. http://10.0.0.5:9190. Repeat for every node.
    #[arg(long = "agent", required = true)]
    pub agents: Vec<String>,
    /// Seconds between the two readings; 0 reports everything since the
    /// agents started.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    #[arg(long, value_enum, default_value_t = LossFormat::Table)]
    pub format: LossFormat,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// One reading of every agent, back to back so the skew between one
/// node's sends and its peer's receives stays small.
pub fn read_all(agents: &[String], timeout: Duration) -> Result<Vec<Delivery>> {
    let reports = agents
        .iter()
        .map(|a| api::fetch_peers(a, timeout))
        .collect::<Result<Vec<_>>>()?;
    Ok(delivery::deliveries(&api::views(&reports)))
}

pub fn run(args: LossArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let first = read_all(&args.agents, timeout)?;
    let matrix = if args.window == 0 {
        first
    } else {
        std::thread::sleep(Duration::from_secs(args.window));
        delivery::window(&first, &read_all(&args.agents, timeout)?)
    };
    match args.format {
        LossFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&matrix)
                .map_err(|e| Error::io("encoding JSON", e.into()))?
        ),
        LossFormat::Table => print!("{}", table(&matrix)),
    }
    Ok(())
}

pub fn table(matrix: &[Delivery]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<8} {:<9} {:>10} {:>10} {:>8} {:>8}\n",
        "node", "peer", "overlay", "signal", "sent", "received", "lost", "ratio"
    );
    for d in matrix {
        let ratio = d
            .loss_ratio()
            .map_or("-".to_string(), |r| format!("{:.3}%", r * 100.0));
        out += &format!(
            "{:<16} {:<16} {:<8} {:<9} {:>10} {:>10} {:>8} {:>8}\n",
            d.from,
            d.to,
            d.overlay,
            "delivery",
            d.sent,
            d.received,
            d.lost(),
            ratio
        );
    }
    out
}
