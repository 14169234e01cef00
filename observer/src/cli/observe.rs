//! `crossover observe`: attach to named interfaces, print what is counted.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use observer_ebpf::Point;

use super::render::{self, Format, View};
use crate::{
    Error, Result,
    datapath::{AttachMode, Hook, LoadOptions, Observer, Selection, Session},
    shape::ClusterShape,
};

#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// Cluster shape (JSON, see docs/shape.md); default: the documented
    /// migration CIDRs and ports with no nodes.
    #[arg(long)]
    pub shape: Option<PathBuf>,
    /// Interface to observe, as NAME or NAME=HOOK (hooks: underlay,
    /// overlay-legacy, overlay-cilium, host, pod). Repeatable.
    #[arg(long = "iface", value_parser = crate::datapath::parse_iface)]
    pub ifaces: Vec<(String, Hook)>,
    /// Also follow the CNIs' devices and pod veths as they appear and
    /// disappear, by name (Flannel, Calico, AWS VPC CNI, Cilium; the rules
    /// are printed at start).
    #[arg(long)]
    pub follow: bool,
    /// With --follow, GLOB=HOOK (or GLOB=none) tried before the default
    /// rules, e.g. 'gke*=pod'. Repeatable.
    #[arg(long = "follow-pattern", value_parser = crate::iface::parse_rule)]
    pub follow_patterns: Vec<crate::iface::Rule>,
    /// Named network namespace (`ip netns`) holding the interfaces.
    #[arg(long)]
    pub netns: Option<String>,
    /// Stop after this long (30s, 5m); 0 runs until SIGINT or SIGTERM.
    #[arg(long, default_value = "0", value_parser = crate::duration::parse_duration_or_zero)]
    pub duration: Duration,
    /// Print a snapshot this often (and always at the end).
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub interval: Duration,
    /// Output: table for people, json for programs (`--format` too).
    #[arg(long = "output", short = 'o', alias = "format", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// How programs are attached: TCX links where the kernel has them
    /// (6.6+), else netlink clsact; or force one.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Capacity of the flow table (1 to 16,777,216); inserts beyond it are
    /// refused and counted.
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_FLOW_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..=crate::datapath::MAX_FLOW_CAPACITY as i64))]
    pub flow_capacity: u32,
    /// Capacity of the address table. Default: twice what the shape needs,
    /// at least 16,384.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub addr_capacity: Option<u32>,
    /// ADDR_BLOCKS entries (24 bytes each): the cluster's pod ranges cut
    /// into their nodes' blocks, so a new flow's addresses are classified
    /// in constant time at any cluster size. Ranges that do not fit are
    /// left to the address trie and named at start; 0 leaves all to it.
    #[arg(long, default_value_t = observer_ebpf::DEFAULT_ADDR_BLOCK_CAPACITY,
          value_parser = clap::value_parser!(u32).range(0..=crate::datapath::MAX_ADDR_BLOCK_CAPACITY as i64))]
    pub addr_block_capacity: u32,
    /// Pods' /32 entries in the address table (the shape file's `pods`);
    /// pods beyond it are left out and counted.
    #[arg(long, default_value_t = crate::datapath::DEFAULT_POD_ADDR_CAPACITY)]
    pub pod_addr_capacity: u32,
    /// Only flows and counters towards or from this peer node (a node of
    /// the shape).
    #[arg(long)]
    pub peer: Option<String>,
    /// Only flows seen at this hook point: underlay, overlay, host, pod.
    #[arg(long, value_parser = parse_point)]
    pub point: Option<Point>,
    /// Flows the table shows, worst first (retransmits, resets, then
    /// packets); the rest are counted. 0 shows all. JSON has every flow
    /// the filters keep.
    #[arg(long, default_value_t = 40)]
    pub top: usize,
}

fn parse_point(s: &str) -> std::result::Result<Point, String> {
    Point::from_label(s)
        .ok_or_else(|| format!("{s:?} is not a hook point (underlay, overlay, host, pod)"))
}

pub async fn run(args: ObserveArgs) -> Result<()> {
    let shape = crate::shape::load(args.shape.as_deref())?;
    let peer = match &args.peer {
        None => None,
        Some(name) => Some(
            shape
                .nodes
                .iter()
                .find(|n| n.name == *name)
                .map(|n| n.underlay)
                .ok_or_else(|| {
                    Error::Shape(format!("--peer {name}: no node of that name in the shape"))
                })?,
        ),
    };
    let view = View {
        peer,
        point: args.point,
        top: args.top,
    };
    if args.ifaces.is_empty() && !args.follow {
        return Err(Error::Shape(
            "nothing to observe: give --iface or --follow".into(),
        ));
    }
    let selection = Selection {
        explicit: args.ifaces.clone(),
        follow: match args.follow {
            true => Some(shape.interface_rules(&args.follow_patterns)?),
            false => None,
        },
    };
    let options = LoadOptions {
        flow_capacity: args.flow_capacity,
        addr_capacity: shape.addr_capacity(args.addr_capacity)?,
        addr_block_capacity: args.addr_block_capacity,
        pod_addr_capacity: args.pod_addr_capacity,
        attach_mode: args.attach_mode,
        netns: args.netns.clone(),
        ..LoadOptions::default()
    };
    let session = Session::open(options, &shape, selection)?;
    eprintln!("crossover: observing {}", session.attached_list());

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut tick = tokio::time::interval(args.interval);
    tick.tick().await;
    let deadline = async {
        match args.duration {
            Duration::ZERO => std::future::pending().await,
            limit => tokio::time::sleep(limit).await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
            _ = tick.tick() => print(&mut session.observer(), &shape, &view, args.format)?,
            followed = session.follow_links() => followed?,
        }
    }
    print(&mut session.observer(), &shape, &view, args.format)?;
    // Dropping the observer detaches everything we attached.
    drop(session);
    eprintln!("crossover: detached");
    Ok(())
}

fn print(observer: &mut Observer, shape: &ClusterShape, view: &View, format: Format) -> Result<()> {
    // As the agent's sampler: stamp known flows from now on, and count the
    // handshakes unanswered past the grace.
    observer.tick()?;
    observer.expire_handshakes(crate::datapath::monotonic_ns())?;
    let snapshot = view.keep(observer.snapshot()?);
    match format {
        Format::Table => println!("{}", render::table(&snapshot, shape, view.top)),
        Format::Json => println!("{}", render::json(&snapshot)),
    }
    Ok(())
}
