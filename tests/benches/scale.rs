//! The agent's footprint measured from outside: the real `crossover agent`
//! (target/release/crossover) in a network namespace, its CPU (utime +
//! stime of its own process, from /proc) over a window after a settle, its
//! memory (VmHWM, VmRSS) and threads, idle and with 100k flows towards a
//! 1000-node shape under steady real traffic. Run with
//! `cargo xtask bench scale` (root); `SCALE_SECONDS` sets the window
//! (default 30 s), `SCALE_SETTLE` the settle (default 10 s), `SCALE_RATE`
//! the steady packet rate (default 20000/s), `SCALE_BINARY` another
//! build of crossover to measure, `SCALE_BASELINE` builds to measure
//! beside it in the same run (paths separated by `:`, each named by its
//! directory; every case runs with each baseline in turn, then with the
//! build measured, one column each), `SCALE_CASES` which cases to run
//! (names or parts of names, comma-separated, e.g. `SCALE_CASES=probes`).
//! `SCALE_CASES=auth` runs only the token checks' cost: reviews the API
//! server answers per reading, with the agent's cache and without.
//!
//! The probe case gives every node of a 1000-node shape its overlay
//! addresses, which the sink owns and answers on (`crossover probe`), with
//! every peer agent's API answering from the sink too (an agent that
//! probes only the peers whose API answered, as before the probe mesh,
//! then probes them all); node-1 is under migration when the binary knows
//! `--probe-budget`. The probe packets the agent sends are counted by
//! nftables on the sink's input over the window.
//!
//! Topology of one case, every name unique per run, all removed on drop:
//!
//! ```text
//!  pod ns                 agent ns (node 0)                    sink ns (node 1 + every peer)
//!  eth0 10.64.0.7/24 ─── vethscale0 10.64.0.1/24
//!                         eth0 192.168.50.1/24 ───────────── eth0 192.168.50.2/24
//!                         10.64.0.0/10, 10.128.0.0/10,         forwarding off: drops
//!                         192.168.0.0/16 via 192.168.50.2      the pod traffic; owns every
//!                                                              peer underlay (local routes)
//!                                                              so peer API reads are refused
//! ```
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crossover_tests::footprint::{
    agent::{Agent, LISTEN, get},
    auth::{self, AuthCost},
    probes::{Counter, FakePeers, Responder},
    proc::{ProcSample, busiest_thread, clock_ticks, per_thread},
    readers,
    requests::RequestCounter,
    topology::{Lab, Probed, overlay_addrs, underlay},
    traffic::{FLOWS, Generator},
};

fn main() {
    let settings = Settings::from_env();
    preflight();
    let binary = binary();
    // The baselines first, so the build measured runs last in each case.
    let builds: Vec<Build> = baselines()
        .into_iter()
        .map(|path| {
            let tag = path
                .parent()
                .and_then(Path::file_name)
                .map_or("baseline".into(), |d| d.to_string_lossy().into_owned());
            Build::of(path, tag)
        })
        .chain([Build::of(binary.clone(), String::new())])
        .collect();

    println!(
        "crossover agent footprint: {} s window after {} s settle, {} cores, binary {}{}",
        settings.seconds.as_secs(),
        settings.settle.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        binary.display(),
        builds
            .iter()
            .filter(|b| !b.tag.is_empty())
            .map(|b| format!(", baseline {} (SCALE_BASELINE)", b.path.display()))
            .collect::<String>()
    );
    let traffic = Traffic::Steady {
        rate: settings.rate,
    };
    let cases = |build: &Build| {
        let (mesh, read_peers) = (build.mesh, build.read_peers);
        [
            Case {
                name: "idle, 2 nodes",
                title: "idle, 2-node shape, default flags",
                nodes: 2,
                flags: vec![],
                traffic: Traffic::None,
                spread: 1,
                probes: false,
                dumps: 0,
                skip: None,
            },
            Case {
                name: "100k flows, 2 nodes",
                title: "100k flows, 2-node shape, default flags",
                nodes: 2,
                flags: vec![],
                traffic,
                spread: 1,
                probes: false,
                dumps: 0,
                skip: None,
            },
            Case {
                name: "100k flows, 1000 peers",
                title: "100k flows, 1000-peer shape, --probe-rate 0",
                nodes: 1000,
                flags: vec!["--probe-rate", "0"],
                traffic,
                spread: 1,
                probes: false,
                dumps: 0,
                skip: None,
            },
            Case {
                name: "+ --read-peers false",
                title: "100k flows, 1000-peer shape, --probe-rate 0 --read-peers false",
                nodes: 1000,
                flags: vec!["--probe-rate", "0", "--read-peers", "false"],
                traffic,
                spread: 1,
                probes: false,
                dumps: 0,
                skip: (!read_peers)
                    .then_some("skipped: this binary's `agent --help` has no --read-peers"),
            },
            Case {
                name: "100k flows to 5000 peers",
                title: "100k flows spread over every peer of a 5000-node shape, --probe-rate 0",
                nodes: 5000,
                flags: vec!["--probe-rate", "0"],
                traffic,
                spread: 4999,
                probes: false,
                dumps: 0,
                skip: None,
            },
            Case {
                name: "probes, 1000 peers",
                title: if mesh {
                    "probes, 1000-peer shape with overlay addresses, node-1 under migration, default flags"
                } else {
                    "probes, 1000-peer shape with overlay addresses, default flags (no probe mesh)"
                },
                nodes: 1000,
                flags: vec![],
                traffic: Traffic::None,
                spread: 1,
                probes: true,
                dumps: 0,
                skip: None,
            },
            Case {
                name: "24 flow dumps",
                title: "100k flows, 2-node shape, then 24 clients dumping /api/v1/flows at once",
                nodes: 2,
                flags: vec![],
                traffic,
                spread: 1,
                probes: false,
                dumps: 24,
                skip: None,
            },
        ]
    };
    let wanted: Vec<String> = std::env::var("SCALE_CASES")
        .map(|v| v.split(',').map(|c| c.trim().to_string()).collect())
        .unwrap_or_default();
    let mut columns: Vec<(String, Option<Outcome>)> = Vec::new();
    let per_build: Vec<_> = builds.iter().map(|b| (b, cases(b))).collect();
    for i in 0..per_build[0].1.len() {
        for (build, cases) in &per_build {
            let case = &cases[i];
            let column = match build.tag.as_str() {
                "" => case.name.to_string(),
                tag => format!("{} ({tag})", case.name),
            };
            if !wanted.is_empty() && !wanted.iter().any(|w| case.name.contains(w.as_str())) {
                if builds.len() == 1 {
                    columns.push((column, None));
                }
                continue;
            }
            println!(
                "\n== {}{}",
                case.title,
                match build.tag.as_str() {
                    "" => String::new(),
                    tag => format!(" [{tag}: {}]", build.path.display()),
                }
            );
            let result = match case.skip {
                Some(why) => {
                    println!("   {why}");
                    None
                }
                None => Some(run_case(case, &build.path, &settings, build.mesh)),
            };
            columns.push((column, result));
        }
    }
    print_table(&columns);
    let loss_help = Command::new(&binary)
        .args(["loss", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !loss_help.contains("--in-flight") {
        println!("\n== readers: skipped, this binary's `crossover loss` has no reading API");
    } else if wanted.is_empty() || wanted.iter().any(|w| w == "readers") {
        readers(&binary);
    }
    if wanted.is_empty() || wanted.iter().any(|w| w == "auth") {
        auth_cost(&binary);
    }
}

/// Reviews the API server answers per reading of one agent checking
/// tokens, with the cache (the default TTL) and without (1 ms), side by
/// side in the same run.
fn auth_cost(binary: &Path) {
    let help = Command::new(binary)
        .args(["agent", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !help.contains("--auth-cache-ttl") {
        println!("\n== auth: skipped, this binary's agent does not check tokens");
        return;
    }
    const READINGS: usize = 20;
    println!(
        "\n== auth: TokenReviews and SubjectAccessReviews the API server answers, \
         {READINGS} readings of one agent (`crossover loss` with a reader's token)"
    );
    for ttl in ["2m", "1ms"] {
        let cost: AuthCost = auth::measure(binary, ttl, READINGS);
        println!(
            "   --auth-cache-ttl {:>3}: {} TokenReviews + {} SubjectAccessReviews for {} \
             readings ({} requests): {:.2} API calls per reading",
            cost.ttl,
            cost.token_reviews,
            cost.access_reviews,
            cost.readings,
            cost.requests,
            cost.per_reading()
        );
    }
}

/// Readers against simulated fleets: the real `crossover loss` in its own
/// process, over real HTTP to N simulated agents (tests/src/bin/fleet.rs).
fn readers(binary: &Path) {
    let fleet = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fleet");
    let baseline = std::env::var_os("SCALE_READER_BASELINE").map(PathBuf::from);
    println!("\n== readers: `crossover loss` against simulated agents on loopback");
    let json = |run: &readers::Run| -> serde_json::Value {
        serde_json::from_slice(&run.stdout).expect("crossover loss prints JSON")
    };
    let report = |title: &str, run: &readers::Run, detail: String| {
        println!(
            "{title}: {} ms, {:.1} MiB ({detail})",
            run.wall.as_millis(),
            run.max_rss_kib as f64 / 1024.0
        );
    };
    // The gate's reading: the node under migration exactly, the totals,
    // and a drill-down to a far pair that loses half its packets, in this
    // process as the driver makes it (`loss::cluster::read`, one client
    // kept across readings): the first reading opens a connection to every
    // agent, the next ones reuse them. The model's packets are never in
    // flight: in_flight 0.
    let agents = readers::Fleet::start(
        &fleet,
        5000,
        &[
            "--fanout",
            "4",
            "--focus",
            "0",
            "--fault",
            "2500:2501:cilium:0.5",
        ],
    );
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let hwm_before =
        status_field(&fs::read_to_string("/proc/self/status").unwrap(), "VmHWM:").unwrap_or(0);
    runtime.block_on(async {
        use observer::loss::{client::Client, cluster};
        let client = Client::new(Duration::from_secs(60));
        let options = cluster::ReadOptions {
            focus: vec!["node-00000".into()],
            in_flight: Duration::ZERO,
            ..cluster::ReadOptions::default()
        };
        for attempt in ["cold", "warm", "warm"] {
            let started = Instant::now();
            let reading = cluster::read(&client, &agents.urls, &options).await;
            let took = started.elapsed();
            let named = reading.rows.iter().filter(|r| r.lost > 0).count();
            let hwm = status_field(&fs::read_to_string("/proc/self/status").unwrap(), "VmHWM:")
                .unwrap_or(0);
            println!(
                "gate reading, 5000 nodes ({attempt}): {} ms, {:.1} MiB peak in the reader ({} agents \
                 answered, {} requests, {} rows, drill-down: {named} pair(s) with loss named)",
                took.as_millis(),
                hwm.saturating_sub(hwm_before) as f64 / 1024.0,
                reading.answered,
                reading.requests,
                reading.rows.len(),
            );
        }
    });
    drop(agents);

    let agents = readers::Fleet::start(
        &fleet,
        1000,
        &["--fanout", "4", "--fault", "500:501:cilium:0.5"],
    );
    let args = ["loss", "-o", "json", "--in-flight", "0", "--timeout", "60s"];
    let run = readers::run(binary, &args, &agents.urls);
    let reading = json(&run);
    report(
        "loss default view, 1000 nodes",
        &run,
        format!(
            "{} agents answered, {} requests, {} rows shown, {} left out",
            reading["answered"],
            reading["requests"],
            reading["rows"].as_array().unwrap().len(),
            reading["left_out"]
        ),
    );
    match &baseline {
        Some(old) => {
            let run = readers::run(
                old,
                &["loss", "--format", "json", "--timeout", "60"],
                &agents.urls,
            );
            let reading = json(&run);
            report(
                "  baseline (SCALE_READER_BASELINE, every agent's /api/v1/loss merged), 1000 nodes",
                &run,
                format!("{} rows", reading["rows"].as_array().map_or(0, Vec::len)),
            );
        }
        None => println!(
            "  (no baseline: set SCALE_READER_BASELINE to a build from before the reading API)"
        ),
    }
}

struct Settings {
    seconds: Duration,
    settle: Duration,
    rate: u64,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str, default: u64| match std::env::var(name) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&v| v > 0)
                .unwrap_or_else(|| panic!("{name}={text:?}: expected a whole number above 0")),
            Err(_) => default,
        };
        Settings {
            seconds: Duration::from_secs(var("SCALE_SECONDS", 30)),
            settle: Duration::from_secs(var("SCALE_SETTLE", 10)),
            rate: var("SCALE_RATE", 20_000),
        }
    }
}

/// Root, and the programs the bench runs.
fn preflight() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the scale bench needs root: it builds network namespaces and runs the agent, \
             which loads eBPF programs (run `cargo xtask bench scale` as root)"
        );
        std::process::exit(1);
    }
    for (program, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        if Command::new(program)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("`{program}` is missing: install {package} (`cargo xtask setup` does)");
            std::process::exit(1);
        }
    }
}

/// target/release/crossover of this workspace, which `cargo xtask bench
/// scale` builds first.
/// `SCALE_BINARY` measures another build instead (an older one, for a
/// before and after with the same bench).
fn binary() -> PathBuf {
    let path = match std::env::var_os("SCALE_BINARY") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/crossover"),
    };
    match path.canonicalize() {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "{}: {e}: build it first (`cargo build --release -p observer`, which \
                 `cargo xtask bench scale` does)",
                path.display()
            );
            std::process::exit(1);
        }
    }
}

/// `SCALE_BASELINE`: builds to measure beside this one, case by case.
fn baselines() -> Vec<PathBuf> {
    let Some(paths) = std::env::var_os("SCALE_BASELINE") else {
        return Vec::new();
    };
    std::env::split_paths(&paths)
        .map(|path| match path.canonicalize() {
            Ok(path) => path,
            Err(e) => {
                eprintln!("SCALE_BASELINE: {}: {e}", path.display());
                std::process::exit(1);
            }
        })
        .collect()
}

/// A build measured, and what its `agent --help` says it knows.
struct Build {
    path: PathBuf,
    /// A baseline's name (its directory's), or empty for the build
    /// measured.
    tag: String,
    read_peers: bool,
    mesh: bool,
}

impl Build {
    fn of(path: PathBuf, tag: String) -> Build {
        let help = String::from_utf8_lossy(
            &Command::new(&path)
                .args(["agent", "--help"])
                .output()
                .unwrap_or_else(|e| panic!("running {} agent --help: {e}", path.display()))
                .stdout,
        )
        .into_owned();
        Build {
            read_peers: help.contains("--read-peers"),
            mesh: help.contains("--probe-budget"),
            path,
            tag,
        }
    }
}

#[derive(Clone, Copy)]
enum Traffic {
    None,
    /// 100k flows created once as fast as possible, then round robin at
    /// `rate` packets per second.
    Steady {
        rate: u64,
    },
}

struct Case {
    /// Column header.
    name: &'static str,
    title: &'static str,
    nodes: usize,
    flags: Vec<&'static str>,
    traffic: Traffic,
    /// Nodes the flows go to: 1 (node 1), or every peer.
    spread: usize,
    /// Overlay addresses in the shape, answered by the sink; probe packets
    /// counted.
    probes: bool,
    /// Clients dumping the flow table at once after the window.
    dumps: usize,
    skip: Option<&'static str>,
}

/// Probe packets a second the agent sent over the window, as the sink
/// counted them.
struct ProbeRates {
    udp: f64,
    tcp: f64,
    /// Of both, towards the node under migration.
    focus: f64,
    /// What the agent says it plans (`crossover_probe_packets_per_second`).
    planned: Option<f64>,
}

struct Outcome {
    cpu_percent: f64,
    hwm_kib: u64,
    rss_kib: u64,
    threads: u64,
    sent_per_second: Option<f64>,
    flows_before: Option<usize>,
    /// `crossover_flows` after the window: all, and host to host (the
    /// agent's own connections to its peers' APIs among them).
    flows_end: u64,
    host_flows_end: u64,
    flow_map_full: u64,
    seen: u64,
    /// `crossover_sample_seconds`: the sampler's last round.
    sample_seconds: Option<f64>,
    /// (name, % of one core) of the single busiest thread.
    busiest_thread: (String, f64),
    /// (thread name, how many, % of one core), busiest first.
    per_thread: Vec<(String, usize, f64)>,
    probes: Option<ProbeRates>,
    /// Requests to peers' APIs per second, counted on the agent
    /// namespace's output: connection attempts, request segments.
    connects_per_second: f64,
    requests_per_second: f64,
    /// /metrics at the end: series (samples) and bytes.
    metrics_series: usize,
    metrics_bytes: usize,
}

fn run_case(case: &Case, binary: &Path, settings: &Settings, mesh: bool) -> Outcome {
    // The node under migration, for a binary whose shape knows it.
    let focus = 1;
    let probed = Probed {
        migrating: mesh.then(|| format!("node-{focus}")),
    };
    let lab = Lab::with(case.nodes, case.probes.then_some(&probed));
    // With probes: the responder, the peers' APIs, and the counters.
    let probing = case.probes.then(|| {
        let responder = Responder::start(&lab.sink, binary);
        let peers = FakePeers::start(&lab.sink);
        let counter = Counter::install(&lab.sink, underlay(0), &overlay_addrs(focus));
        (responder, peers, counter)
    });
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--config".into(),
        lab.shape.display().to_string(),
        "--iface".into(),
        "eth0=underlay".into(),
        "--listen".into(),
        LISTEN.into(),
    ];
    if let Traffic::Steady { .. } = case.traffic {
        args.extend(["--flow-capacity".into(), "262144".into()]);
    }
    args.extend(case.flags.iter().map(|f| f.to_string()));
    println!(
        "   command: ip netns exec {} {} {}",
        lab.agent.name,
        binary.display(),
        args.join(" ")
    );
    let requests = RequestCounter::install(&lab.agent.name);
    let agent = Agent::start(&lab, binary, &args);
    let started = Instant::now();
    agent.wait_ready(&lab.agent.name);
    println!(
        "   ready after {:.1} s (pid {})",
        started.elapsed().as_secs_f64(),
        agent.pid
    );

    let mut generator = None;
    let mut flows_before = None;
    if let Traffic::Steady { rate } = case.traffic {
        let g = Generator::start(&lab.pod.name, rate, case.spread);
        let first = g.first_pass_done();
        println!(
            "   first pass: {FLOWS} flows sent in {:.2} s",
            first.as_secs_f64()
        );
        // The flow table as the agent's ageing sweep counts it
        // (`crossover_flows`, at its cadence): no dump of 200k flows,
        // which would put a request's peak into the agent's VmHWM.
        let deadline = Instant::now() + Duration::from_secs(90);
        let count = loop {
            let (_, body) = get(&lab.agent.name, "/metrics", Duration::from_secs(10));
            let count = metric_sum(&body, "crossover_flows", |_| true) as usize;
            if count as u64 >= FLOWS || Instant::now() > deadline {
                break count;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        println!("   flows in the agent's table (its last sweep): {count}");
        assert!(
            count as u64 >= FLOWS,
            "the agent holds {count} flows, expected at least {FLOWS}; log: {}",
            agent.log_tail()
        );
        flows_before = Some(count);
        generator = Some(g);
    }

    std::thread::sleep(settings.settle);
    let sent_start = generator.as_ref().map(Generator::sent);
    let counted_start = probing.as_ref().map(|(_, _, c)| c.read());
    let requests_start = requests.read();
    let before = ProcSample::take(agent.pid);
    // Memory and threads every 5 s of the window, to tell growth from a
    // plateau.
    let end = before.at + settings.seconds;
    let mut timeline = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_secs(5)));
        let status = fs::read_to_string(format!("/proc/{}/status", agent.pid)).unwrap_or_default();
        timeline.push(format!(
            "{:.0}/{}",
            status_field(&status, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            status_field(&status, "Threads:").unwrap_or(0)
        ));
        if left <= Duration::from_secs(5) {
            break;
        }
    }
    let after = ProcSample::take(agent.pid);
    let counted_end = probing.as_ref().map(|(_, _, c)| c.read());
    let requests_end = requests.read();
    println!(
        "   VmRSS MiB / threads every 5 s of the window: {}",
        timeline.join(" ")
    );
    let sent_end = generator.as_ref().map(Generator::sent);
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid)).expect("status");
    let field = |name: &str| -> u64 {
        status_field(&status, name)
            .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", agent.pid))
    };
    drop(generator);

    // After the window: what the agent counted, and how long its sampler's
    // last round took.
    let (status, metrics) = get(&lab.agent.name, "/metrics", Duration::from_secs(30));
    assert_eq!(status, 200, "GET /metrics: {status}");
    let family = |name: &str, keep: &dyn Fn(&str) -> bool| metric_sum(&metrics, name, keep);
    let flow_map_full = family("crossover_skipped_packets_total", &|l| {
        l.contains("reason=\"flow_map_full\"")
    });
    let seen = family("crossover_seen_packets_total", &|_| true);
    let flows_end = family("crossover_flows", &|_| true);
    let host_flows_end = family("crossover_flows", &|l| {
        l.contains("src_net=\"host\"") && l.contains("dst_net=\"host\"")
    });
    let sample_seconds = metric_value(&metrics, "crossover_sample_seconds");
    let probes = counted_start.zip(counted_end).map(|(a, b)| {
        let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / wall;
        let planned = metrics
            .lines()
            .find(|l| {
                l.starts_with("crossover_probe_packets_per_second{")
                    && l.contains("kind=\"budget\"")
            })
            .map(|_| {
                metric_sum(&metrics, "crossover_probe_packets_per_second", |l| {
                    !l.contains("kind=\"budget\"")
                }) as f64
            });
        let rates = ProbeRates {
            udp: per_second(a.udp, b.udp),
            tcp: per_second(a.tcp, b.tcp),
            focus: per_second(a.focus, b.focus),
            planned,
        };
        println!(
            "   probe packets the agent sent, counted by the sink's nftables over {wall:.1} s: \
             {:.1}/s (UDP {:.1}, TCP {:.1}: SYN, ACK, RST), {:.1}/s of them to node-{focus}; \
             the agent's own plan: {}",
            rates.udp + rates.tcp,
            rates.udp,
            rates.tcp,
            rates.focus,
            planned.map_or("-".to_string(), |p| format!("{p:.1}/s")),
        );
        rates
    });
    if flow_map_full > 0 {
        println!(
            "   note: {flow_map_full} flow inserts refused (table full); {host_flows_end} of the \
             {flows_end} flows at the end are host to host, such as the agent's own connections \
             to its peers' APIs"
        );
    }

    let metrics_series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    // What the agent counts per peer: the keys behind /metrics' per-peer
    // families (summed past 100 nodes).
    let (_, peers_body) = get(&lab.agent.name, "/api/v1/peers", Duration::from_secs(30));
    let peers: serde_json::Value = serde_json::from_str(&peers_body).unwrap_or_default();
    let records = peers["peers"].as_array().map_or(0, Vec::len);
    let distinct: std::collections::BTreeSet<&str> = peers["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["peer"].as_str())
        .collect();
    println!(
        "   per-peer counters: {records} keys towards {} peers",
        distinct.len()
    );
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / wall;
    println!(
        "   requests to peers' APIs, counted on the agent's output over {wall:.1} s: {:.1} \
         connections/s, {:.1} request segments/s; /metrics: {metrics_series} series, {} bytes",
        per_second(requests_start.connects, requests_end.connects),
        per_second(requests_start.segments, requests_end.segments),
        metrics.len()
    );
    let outcome = Outcome {
        connects_per_second: per_second(requests_start.connects, requests_end.connects),
        requests_per_second: per_second(requests_start.segments, requests_end.segments),
        metrics_series,
        metrics_bytes: metrics.len(),
        cpu_percent: after.ticks.saturating_sub(before.ticks) as f64 / clock_ticks() / wall * 100.0,
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        sent_per_second: sent_start
            .zip(sent_end)
            .map(|(a, b)| b.saturating_sub(a) as f64 / wall),
        flows_before,
        flows_end,
        host_flows_end,
        flow_map_full,
        seen,
        sample_seconds,
        busiest_thread: busiest_thread(&before, &after, wall),
        per_thread: per_thread(&before, &after, wall),
        probes,
    };
    // Threads that ended during the window leave their time in the
    // process's total only.
    let live: f64 = outcome.per_thread.iter().map(|(_, _, p)| p).sum();
    let threads_used = after
        .threads
        .iter()
        .filter(|(tid, (_, t))| before.threads.get(tid).map_or(0, |(_, b)| *b) < *t)
        .count();
    println!(
        "   agent CPU {:.2}% of one core over {wall:.1} s: {live:.2}% in the {} threads alive \
         at the end ({threads_used} of them ran), {:.1}% in threads that ended during the window",
        outcome.cpu_percent,
        after.threads.len(),
        (outcome.cpu_percent - live).max(0.0),
    );
    if case.dumps > 0 {
        let storm = crossover_tests::footprint::dumps::storm(
            &lab.agent.name,
            case.dumps,
            Duration::from_secs(300),
        );
        let status = fs::read_to_string(format!("/proc/{}/status", agent.pid)).unwrap_or_default();
        let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
        println!(
            "   {} clients dumping /api/v1/flows at once: {} whole dumps of {} flows in {:.1} s, \
             {} pages, {} answered 429 (retried after 1 s), {} failed; /healthz max {:.0} ms \
             (p99 {:.0}), /api/v1/loss max {:.0} ms (p99 {:.0}); agent VmHWM {:.1} MiB after \
             (before the dumps {:.1} MiB), VmRSS {:.1} MiB",
            storm.clients,
            storm.whole,
            storm.flows_per_dump,
            storm.took.as_secs_f64(),
            storm.pages,
            storm.too_busy,
            storm.failed,
            storm.healthz_ms.0,
            storm.healthz_ms.1,
            storm.loss_ms.0,
            storm.loss_ms.1,
            mib(status_field(&status, "VmHWM:")),
            outcome.hwm_kib as f64 / 1024.0,
            mib(status_field(&status, "VmRSS:")),
        );
    }
    drop(agent);
    drop(probing);
    drop(lab);
    outcome
}

/// A number of /proc/PID/status (kB for the Vm* lines).
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The value of a family's first sample.
fn metric_value(text: &str, family: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sum of a family's samples whose line passes `keep`.
fn metric_sum(text: &str, family: &str, keep: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| keep(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn print_table(columns: &[(String, Option<Outcome>)]) {
    let cell = |r: &Option<Outcome>, f: &dyn Fn(&Outcome) -> String| match r {
        Some(o) => f(o),
        None => "skipped".into(),
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    type Row<'a> = (&'a str, Box<dyn Fn(&Outcome) -> String>);
    let rows: Vec<Row> = vec![
        (
            "agent CPU, % of one core",
            Box::new(|o| format!("{:.2}", o.cpu_percent)),
        ),
        (
            "VmHWM, MiB",
            Box::new(|o| format!("{:.1}", o.hwm_kib as f64 / 1024.0)),
        ),
        (
            "VmRSS at end, MiB",
            Box::new(|o| format!("{:.1}", o.rss_kib as f64 / 1024.0)),
        ),
        ("threads at end", Box::new(|o| o.threads.to_string())),
        (
            "packets/s sent",
            Box::new(move |o| opt(o.sent_per_second.map(|v| format!("{v:.0}")))),
        ),
        (
            "probe packets/s sent (sink count)",
            Box::new(move |o| opt(o.probes.as_ref().map(|p| format!("{:.1}", p.udp + p.tcp)))),
        ),
        (
            "  of which to node-1 (migrating)",
            Box::new(move |o| opt(o.probes.as_ref().map(|p| format!("{:.1}", p.focus)))),
        ),
        (
            "  the agent's plan, packets/s",
            Box::new(move |o| {
                opt(o
                    .probes
                    .as_ref()
                    .and_then(|p| p.planned)
                    .map(|v| format!("{v:.1}")))
            }),
        ),
        (
            "flows before window",
            Box::new(move |o| opt(o.flows_before.map(|v| v.to_string()))),
        ),
        ("flows at end", Box::new(|o| o.flows_end.to_string())),
        (
            "  of which host to host",
            Box::new(|o| o.host_flows_end.to_string()),
        ),
        ("seen packets at end", Box::new(|o| o.seen.to_string())),
        (
            "skipped flow_map_full",
            Box::new(|o| o.flow_map_full.to_string()),
        ),
        (
            "sampler round, s",
            Box::new(move |o| opt(o.sample_seconds.map(|v| format!("{v:.3}")))),
        ),
        (
            "connections/s to peers' APIs",
            Box::new(|o| format!("{:.1}", o.connects_per_second)),
        ),
        (
            "request segments/s to peers' APIs",
            Box::new(|o| format!("{:.1}", o.requests_per_second)),
        ),
        (
            "/metrics series",
            Box::new(|o| o.metrics_series.to_string()),
        ),
        (
            "/metrics KiB",
            Box::new(|o| format!("{:.0}", o.metrics_bytes as f64 / 1024.0)),
        ),
        (
            "threads by name, % core",
            Box::new(|o| {
                o.per_thread
                    .iter()
                    .filter(|(_, _, p)| *p >= 0.05)
                    .map(|(n, k, p)| format!("{n} x{k} {p:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        (
            "busiest thread, % core",
            Box::new(|o| format!("{} {:.1}", o.busiest_thread.0, o.busiest_thread.1)),
        ),
    ];
    let mut table: Vec<Vec<String>> = vec![
        std::iter::once("figure".to_string())
            .chain(columns.iter().map(|(name, _)| name.clone()))
            .collect(),
    ];
    for (label, f) in &rows {
        table.push(
            std::iter::once(label.to_string())
                .chain(columns.iter().map(|(_, r)| cell(r, f.as_ref())))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    println!();
    for (i, row) in table.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(j, (c, w))| {
                if j == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("{}", line.join(" | "));
        if i == 0 {
            println!(
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-|-")
            );
        }
    }
}
