//! `cargo xtask fuzz [--packets N] [--seed S]`: the long fuzz run
//! (tests/src/fuzz.rs), 1,000,000 packets through every program by
//! default. Needs root.
use clap::Parser;
use crossover_tests::fuzz::{self, Options};

#[derive(Parser)]
#[command(name = "fuzz")]
struct Args {
    /// Packets to generate; each goes through every program.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    packets: u64,
    /// The run's seed (default: a new one, printed); the same seed and
    /// count replay a run.
    #[arg(long)]
    seed: Option<u64>,
    /// Check map bounds and counters (and empty the flow table) every
    /// this many packets.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    check_every: u64,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fuzz seed {seed}, {} packets", args.packets);
    let started = std::time::Instant::now();
    match fuzz::run(Options {
        packets: args.packets,
        seed,
        check_every: args.check_every,
    }) {
        Ok(report) => {
            println!("{}", report.summary());
            println!("in {:.1} s", started.elapsed().as_secs_f64());
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
