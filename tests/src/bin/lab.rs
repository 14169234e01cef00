//! `cargo xtask lab …`: build, fault, drive and remove a namespace lab of
//! a cluster in the middle of its migration to Cilium (see docs/lab.md).
use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use crossover_tests::lab::{Fault, Lab, LabSpec, LegacyCni, Overlay, geneve, traffic};

#[derive(Parser)]
#[command(
    name = "lab",
    about = "A CNI migration's datapath in network namespaces"
)]
struct Cli {
    /// Which lab (several can exist side by side).
    #[arg(long, default_value = "lab", global = true)]
    name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab: nodes, both overlays, masquerading, pods.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Nodes already migrated (workers first, control plane last).
        #[arg(long, default_value_t = 1)]
        migrated: usize,
        /// App pods per node, besides one DaemonSet pod.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// The CNI migrated from: flannel, calico-vxlan, aws-native,
        /// calico-crosssubnet, calico-ipip or calico-ipip-crosssubnet.
        #[arg(long, default_value = "flannel")]
        legacy: LegacyCni,
    },
    /// Remove the lab and everything in it; safe to repeat.
    Down,
    /// Nodes, pods with their addresses, and faults.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Migrate one node: drain, label, pods back on Cilium.
    Migrate {
        node: String,
        /// Leave DaemonSet pods on their legacy addresses, as the guide
        /// does until they are deleted.
        #[arg(long)]
        keep_daemonsets: bool,
    },
    /// Delete a node's DaemonSet pods so they come back on its network.
    RestartDaemonsets { node: String },
    /// The shape file `crossover observe --shape` needs on NODE.
    Shape { node: String },
    /// Inject or clear faults.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Generate traffic between pods (`node/pod`) or nodes (`node`).
    #[command(subcommand)]
    Traffic(TrafficCommand),
}

#[derive(Subcommand)]
enum FaultCommand {
    /// Drop PERCENT of FROM's packets to TO on one overlay, at random.
    Loss {
        #[command(flatten)]
        path: PathArgs,
        #[arg(long)]
        percent: f64,
    },
    /// Drop everything FROM sends TO on one overlay.
    Blackhole {
        #[command(flatten)]
        path: PathArgs,
    },
    /// FROM's own firewall drops PERCENT of what it sends TO on one
    /// overlay (inside FROM, before its NIC: the kernel names the reason).
    Firewall {
        #[command(flatten)]
        path: PathArgs,
        #[arg(long)]
        percent: f64,
    },
    /// Lower one overlay's MTU on one node (not a black hole: the
    /// sender's kernel answers ICMP fragmentation needed).
    Mtu {
        #[arg(long)]
        node: String,
        #[arg(long)]
        overlay: Overlay,
        #[arg(long)]
        mtu: u32,
    },
    /// An MTU black hole between FROM and TO on one overlay, both ways: the
    /// wire drops its tunnel packets over MTU bytes without ICMP.
    MtuBlackhole {
        #[command(flatten)]
        path: PathArgs,
        /// The largest IPv4 packet the wire carries (the outer,
        /// encapsulated one), under the underlay's 1500.
        #[arg(long)]
        mtu: u32,
    },
    /// Remove fault ID, or all of them.
    Clear {
        id: Option<u32>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[derive(Args)]
struct PathArgs {
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
    #[arg(long)]
    overlay: Overlay,
}

#[derive(Args)]
struct Ends {
    #[arg(long)]
    from: String,
    #[arg(long)]
    to: String,
}

#[derive(Subcommand)]
enum TrafficCommand {
    /// Short TCP connections, one request each.
    Tcp {
        #[command(flatten)]
        ends: Ends,
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    /// One long-lived TCP connection.
    Stream {
        #[command(flatten)]
        ends: Ends,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Bytes per second.
        #[arg(long, default_value_t = 1_000_000)]
        rate: u64,
    },
    /// A paced UDP stream.
    Udp {
        #[command(flatten)]
        ends: Ends,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 1000)]
        pps: u64,
    },
    /// ICMP echo.
    Ping {
        #[command(flatten)]
        ends: Ends,
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    /// Crafted Geneve datagrams from node FROM to node TO carrying
    /// INNER_FROM -> INNER_TO.
    Geneve {
        #[command(flatten)]
        ends: Ends,
        #[arg(long)]
        inner_from: String,
        #[arg(long)]
        inner_to: String,
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !matches!(cli.command, Command::Shape { .. } | Command::Status { .. }) {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        anyhow::ensure!(euid == 0, "the lab needs root (network namespaces)");
    }
    match cli.command {
        Command::Up {
            nodes,
            migrated,
            pods,
            legacy,
        } => {
            let lab = Lab::up(&LabSpec {
                name: cli.name,
                nodes,
                migrated,
                pods,
                legacy,
            })?;
            print_status(&lab);
        }
        Command::Down => {
            let gone = Lab::down(&cli.name)?;
            println!("lab {}: removed {} namespaces", cli.name, gone.len());
        }
        Command::Status { json } => {
            let lab = Lab::open(&cli.name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(lab.state())?);
            } else {
                print_status(&lab);
            }
        }
        Command::Migrate {
            node,
            keep_daemonsets,
        } => {
            let mut lab = Lab::open(&cli.name)?;
            lab.migrate(&node, !keep_daemonsets)?;
            print_status(&lab);
        }
        Command::RestartDaemonsets { node } => {
            let mut lab = Lab::open(&cli.name)?;
            lab.restart_daemonset_pods(&node)?;
            print_status(&lab);
        }
        Command::Shape { node } => {
            let lab = Lab::open(&cli.name)?;
            println!("{}", serde_json::to_string_pretty(&lab.shape(&node)?)?);
        }
        Command::Fault(command) => fault(&cli.name, command)?,
        Command::Traffic(command) => traffic(&cli.name, command)?,
    }
    Ok(())
}

fn fault(name: &str, command: FaultCommand) -> Result<()> {
    let mut lab = Lab::open(name)?;
    let fault = match command {
        FaultCommand::Loss { path, percent } => Fault::Loss {
            from: path.from,
            to: path.to,
            overlay: path.overlay,
            percent,
        },
        FaultCommand::Blackhole { path } => Fault::Loss {
            from: path.from,
            to: path.to,
            overlay: path.overlay,
            percent: 100.0,
        },
        FaultCommand::Firewall { path, percent } => Fault::Firewall {
            node: path.from,
            peer: path.to,
            overlay: path.overlay,
            percent,
        },
        FaultCommand::Mtu { node, overlay, mtu } => Fault::Mtu { node, overlay, mtu },
        FaultCommand::MtuBlackhole { path, mtu } => Fault::MtuBlackhole {
            a: path.from,
            b: path.to,
            overlay: path.overlay,
            mtu,
        },
        FaultCommand::Clear { id: Some(id), .. } => return lab.clear(id),
        FaultCommand::Clear { all: true, .. } => return lab.clear_all(),
        FaultCommand::Clear { .. } => anyhow::bail!("fault clear: give an ID or --all"),
    };
    let text = fault.to_string();
    let id = lab.inject(fault)?;
    println!("fault {id}: {text}");
    Ok(())
}

fn traffic(name: &str, command: TrafficCommand) -> Result<()> {
    let lab = Lab::open(name)?;
    let ends = |e: &Ends| -> Result<_> { Ok((lab.endpoint(&e.from)?, lab.endpoint(&e.to)?)) };
    let report = match &command {
        TrafficCommand::Tcp { ends: e, count } => {
            let (from, to) = ends(e)?;
            serde_json::to_value(traffic::tcp_connections(
                &from,
                &to,
                *count,
                Duration::from_secs(1),
            )?)?
        }
        TrafficCommand::Stream {
            ends: e,
            seconds,
            rate,
        } => {
            let (from, to) = ends(e)?;
            serde_json::to_value(traffic::tcp_stream(
                &from,
                &to,
                Duration::from_secs(*seconds),
                *rate,
            )?)?
        }
        TrafficCommand::Udp {
            ends: e,
            count,
            pps,
        } => {
            let (from, to) = ends(e)?;
            serde_json::to_value(traffic::udp_stream(&from, &to, *count, *pps, 200)?)?
        }
        TrafficCommand::Ping { ends: e, count } => {
            let (from, to) = ends(e)?;
            serde_json::to_value(traffic::ping(
                &from,
                &to,
                *count,
                Duration::from_millis(20),
            )?)?
        }
        TrafficCommand::Geneve {
            ends: e,
            inner_from,
            inner_to,
            count,
        } => {
            let taken = geneve::send(&lab, &e.from, &e.to, inner_from, inner_to, *count, 1000)
                .context("sending Geneve")?;
            serde_json::json!({ "sent": count, "received": taken })
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn print_status(lab: &Lab) {
    let legacy = lab.state().legacy;
    println!("lab {} (legacy CNI: {legacy})", lab.name());
    for node in lab.nodes() {
        let state = match (node.migrated, node.cordoned) {
            (_, true) => "cordoned".to_string(),
            (true, _) => "migrated (Cilium)".to_string(),
            (false, _) => format!("legacy ({legacy})"),
        };
        let role = if node.control_plane {
            "control plane"
        } else {
            "worker"
        };
        println!("  {:<14} {:<13} {state}", node.name, role);
        for pod in &node.pods {
            println!(
                "    {:<8} {:<15} {:<7} {:<9} on {}",
                pod.name,
                pod.addr.to_string(),
                format!("{:?}", pod.network).to_lowercase(),
                format!("{:?}", pod.kind).to_lowercase(),
                pod.host_if
            );
        }
    }
    for fault in &lab.state().faults {
        println!("  fault {}: {}", fault.id, fault.fault);
    }
}
