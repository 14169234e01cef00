//! Project tasks: `cargo xtask setup | build | image | test | lint | fuzz | bench [datapath|scale] | demo [loss] | lab`.
//! Every task that needs the toolchain runs `setup` first, which installs
//! only what is missing, so a fresh machine needs nothing done by hand.
mod image;
mod setup;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install Debian packages, the nightly rust-src and bpf-linker if missing.
    Setup,
    /// Build the `crossover` binary (release) with the eBPF object embedded.
    Build,
    /// The container image: the static release binary on `scratch`, built
    /// offline with buildah into target/image/crossover-VERSION.oci.tar.
    Image,
    /// Lint, then run every test (needs root: tests load real programs).
    Test,
    /// rustfmt and clippy, host crates and eBPF crate separately.
    Lint,
    /// Random and mutated packets through every program (root): the long
    /// form of tests/fuzz.rs, 1,000,000 packets unless `--packets` says.
    Fuzz {
        /// Packets to generate; each goes through every program.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Replay a run: the seed a failure (or the start) printed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// `bench` or `bench datapath`: ns per packet of each program, with
    /// BPF_PROG_TEST_RUN repeat. `bench scale`: the release agent's CPU and
    /// memory in a namespace, idle and with 100k flows (root).
    Bench {
        #[arg(value_enum, default_value_t = Bench::Datapath)]
        which: Bench,
    },
    /// The whole job: a 4-node migration gated on loss, halted by a fault,
    /// resumed, and its HTML report (root). `demo loss`: the live loss
    /// view of a half-migrated lab.
    Demo {
        #[arg(value_enum, default_value_t = Demo::Migration)]
        which: Demo,
    },
    /// The namespace lab of a migrating cluster: `lab up`, `lab down`,
    /// `lab fault`, `lab traffic`, ... (`cargo xtask lab --help`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Demo {
    /// `crossover migrate` from start to report (tests/src/bin/demo.rs).
    Migration,
    /// Loss per node pair while a fault comes and goes (tests/src/bin/loss_demo.rs).
    Loss,
}

#[derive(Clone, Copy, ValueEnum)]
enum Bench {
    /// ns per packet of each program (tests/benches/datapath.rs).
    Datapath,
    /// The agent's footprint measured from outside (tests/benches/scale.rs).
    Scale,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "observer"])
        }
        Task::Image => {
            setup::run()?;
            image::run()
        }
        Task::Test => {
            setup::run()?;
            require_root("the tests load eBPF programs and build network namespaces")?;
            lint()?;
            // tests/cli.rs runs the real binary; `cargo test` alone builds
            // bins only as test harnesses.
            cargo(&["build", "-p", "observer", "--bin", "crossover"])?;
            cargo(&["test", "--workspace", "--no-fail-fast"])
        }
        Task::Lint => {
            setup::run()?;
            lint()
        }
        Task::Fuzz { packets, seed } => {
            setup::run()?;
            require_root("the fuzz run loads eBPF programs")?;
            // Debug build, as the tests: the kernel's test runs dominate.
            cargo(&["build", "-p", "crossover-tests", "--bin", "fuzz"])?;
            let packets = packets.to_string();
            let seed = seed.map(|s| s.to_string());
            let mut args = vec!["--packets", packets.as_str()];
            if let Some(seed) = &seed {
                args.extend(["--seed", seed.as_str()]);
            }
            run("target/debug/fuzz", &args)
        }
        Task::Bench {
            which: Bench::Datapath,
        } => {
            setup::run()?;
            require_root("the benchmark loads eBPF programs")?;
            cargo(&["bench", "-p", "crossover-tests", "--bench", "datapath"])
        }
        Task::Bench {
            which: Bench::Scale,
        } => {
            setup::run()?;
            require_root("the benchmark builds network namespaces and runs the agent")?;
            // The bench runs target/release/crossover, the real binary, and
            // target/release/fleet, the simulated agents its readers read.
            cargo(&["build", "--release", "-p", "observer"])?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "crossover-tests",
                "--bin",
                "fleet",
            ])?;
            cargo(&["bench", "-p", "crossover-tests", "--bench", "scale"])
        }
        Task::Demo {
            which: Demo::Migration,
        } => {
            setup::run()?;
            require_root("the demo builds network namespaces and attaches programs")?;
            // The lab runs target/debug/crossover, as the tests do.
            cargo(&["build", "-p", "observer", "--bin", "crossover"])?;
            cargo(&["build", "-p", "crossover-tests", "--bin", "demo"])?;
            run("target/debug/demo", &[])
        }
        Task::Demo { which: Demo::Loss } => {
            setup::run()?;
            require_root("the demo builds network namespaces and attaches programs")?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "crossover-tests",
                "--bin",
                "loss-demo",
            ])?;
            run("target/release/loss-demo", &[])
        }
        Task::Lab { args } => {
            setup::run()?;
            cargo(&[
                "build",
                "--release",
                "-p",
                "crossover-tests",
                "--bin",
                "lab",
            ])?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("target/release/lab", &args)
        }
    }
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The eBPF crate only builds for the BPF target, with nightly.
    run(
        "cargo",
        &[
            "+nightly",
            "clippy",
            "-p",
            "observer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
}

fn require_root(why: &str) -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("this task must run as root: {why}");
    }
    Ok(())
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    run(env!("CARGO"), args)
}

pub(crate) fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .context("starting cargo")?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}
