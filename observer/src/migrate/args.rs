//! Flags of `crossover migrate` and `crossover report`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand, ValueEnum};

use super::{
    analysis::Policy,
    context::Options,
    gate::{GateScope, Ratio, SignalThreshold, Thresholds},
    plan::PlanOptions,
    preflight::PreflightOptions,
    state::{OnBreach, Settings},
};
use crate::{Result, duration::parse_duration};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,
    #[command(flatten, next_help_heading = "Where things are, how long to wait")]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Preflight checks and the ordered plan; changes nothing.
    Plan(RunArgs),
    /// Start a migration: preflight, then node by node behind the gate.
    Run(RunArgs),
    /// Where the migration is.
    Status {
        /// Output: table, markdown or json (`--format` too).
        #[arg(long = "output", short = 'o', alias = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Continue a halted, aborted or crashed migration where it stopped.
    Resume(ResumeArgs),
    /// Stop the running driver at its next step; nodes stay as they are.
    Abort {
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Put one node back on the legacy CNI.
    Rollback {
        /// The node to put back.
        node: String,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Markdown,
    Json,
}

/// Where things are and how long to wait: may change between a run and
/// its resume.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Kubeconfig file; default: in-cluster, then $KUBECONFIG, ~/.kube/config.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of crossover's agents and of the migration's state.
    #[arg(long, global = true, default_value = "crossover")]
    pub namespace: String,
    /// Name of the migration: its state ConfigMap and its Lease.
    #[arg(long, global = true, default_value = "crossover-migration")]
    pub name: String,
    /// Namespace of Cilium's agent pods and `cilium-config`.
    #[arg(long, global = true, default_value = "kube-system")]
    pub cilium_namespace: String,
    /// Label selector of the Cilium agent pods.
    #[arg(long, global = true, default_value = "k8s-app=cilium")]
    pub cilium_selector: String,
    /// Label selector of crossover's agent pods (in --namespace).
    #[arg(
        long,
        global = true,
        default_value = "app.kubernetes.io/name=crossover-agent"
    )]
    pub agent_selector: String,
    /// Port of the agents' API (their --listen).
    #[arg(long, global = true, default_value_t = 9190)]
    pub agent_port: u16,
    /// Agent URLs, instead of finding agents through their pods. Repeat.
    #[arg(long = "agent", global = true)]
    pub agents: Vec<String>,
    /// How long a drain may take (evictions a disruption budget refuses
    /// are retried until then).
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long pods (the Cilium agent, restarted pods, a rebooted node)
    /// may take to be Ready.
    #[arg(long, global = true, default_value = "5m", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// How long probes may take to be answered both ways after the restart.
    #[arg(long, global = true, default_value = "2m", value_parser = parse_duration)]
    pub verify_timeout: Duration,
    /// How long --reboot-hook may run.
    #[arg(long, global = true, default_value = "15m", value_parser = parse_duration)]
    pub hook_timeout: Duration,
    /// Evict pods without a controller too (they are not recreated).
    #[arg(long, global = true)]
    pub evict_bare_pods: bool,
    /// How long a pod may wait for its sandbox before the gate counts it
    /// as stuck.
    #[arg(long, global = true, default_value = "2m", value_parser = parse_duration)]
    pub sandbox_grace: Duration,
    /// How often the driver looks at what it waits for (pods, the node).
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How often the gate reads the agents during baseline and soak.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub gate_interval: Duration,
    /// Timeout of one request to an agent.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// Where the gate reads loss: `agents` (each asked for its half of
    /// the same window), or `prometheus=URL` (the shipped recording
    /// rules' records in that Prometheus, over whole record windows:
    /// docs/migrate.md). The agents are still asked for what only they
    /// know (verify's probes).
    #[arg(long, global = true, default_value = "agents")]
    pub source: crate::loss::Source,
    #[command(flatten)]
    pub window: crate::loss::cluster::WindowArgs,
    /// A crashed driver's Lease is taken over after this long unrenewed.
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
}

impl CommonArgs {
    pub fn options(&self) -> Options {
        Options {
            agent_credentials: None,
            namespace: self.namespace.clone(),
            cilium_namespace: self.cilium_namespace.clone(),
            cilium_selector: self.cilium_selector.clone(),
            agent_selector: self.agent_selector.clone(),
            agent_port: self.agent_port,
            agents: self.agents.clone(),
            drain_timeout: self.drain_timeout,
            ready_timeout: self.ready_timeout,
            verify_timeout: self.verify_timeout,
            hook_timeout: self.hook_timeout,
            evict_bare_pods: self.evict_bare_pods,
            sandbox_grace: self.sandbox_grace,
            poll: self.poll_interval,
            gate_interval: self.gate_interval,
            agent_timeout: self.agent_timeout,
            read: self.window.options(),
            source: self.source.clone(),
        }
    }
}

/// What a run is judged by; kept in the state for `resume`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Only these nodes, in this order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Only nodes matching this label selector.
    #[arg(long)]
    pub selector: Option<String>,
    /// Also nodes that already carry the migration label.
    #[arg(long)]
    pub include_labelled: bool,
    /// Highest loss ratio the gate accepts, for every signal: 1%, 0.5%, 0.01.
    #[arg(long, default_value = "1%")]
    pub threshold: Ratio,
    /// Per signal, overriding --threshold: SIGNAL=RATIO (delivery,
    /// handshake, retransmit, probe_udp, probe_tcp). Repeat.
    #[arg(long = "signal-threshold")]
    pub signal_thresholds: Vec<SignalThreshold>,
    /// Rows with fewer packets sent are recorded, not judged.
    #[arg(long, default_value_t = 20)]
    pub min_sent: u64,
    /// Readings in a row, each over a window of its own, a row must stay
    /// over its threshold before the gate closes (1: the first breach).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub consecutive_breaches: u32,
    /// A loss ratio that closes the gate at the first reading, whatever
    /// --consecutive-breaches says; `off` for none.
    #[arg(long, default_value = "10%", value_parser = parse_ceiling)]
    pub hard_ceiling: Ceiling,
    /// Which pairs the gate judges: `all` (every pair and the cluster
    /// totals) or `node` (pairs with the node under migration at one end).
    #[arg(long, value_enum, default_value_t = GateScope::All)]
    pub gate_scope: GateScope,
    /// How long the gate is held before a node is touched, after one full
    /// agent window has passed (0: one reading).
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    pub baseline: u64,
    /// How long loss must stay under the threshold after a node moved,
    /// counted from one agent window after its last change.
    #[arg(long, default_value = "30s", value_parser = parse_seconds)]
    pub soak: u64,
    /// What to do when the gate closes: halt (node left cordoned) or
    /// rollback (node put back on the legacy CNI, then halt).
    #[arg(long, value_enum, default_value_t = OnBreach::Halt)]
    pub on_breach: OnBreach,
    /// Command that reboots the node, run with NODE set (e.g.
    /// 'docker restart $NODE'); no reboot without it.
    #[arg(long)]
    pub reboot_hook: Option<String>,
    /// The Service CIDR, for the preflight's disjointness check (most
    /// clusters do not publish it in the API). Repeat for several.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<ipnet::Ipv4Net>,
    #[command(flatten)]
    pub overrides: crate::cluster::derive::ShapeOverrides,
    /// Start without asking.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Clone, Debug, Args)]
pub struct ResumeArgs {
    /// Resume without asking.
    #[arg(long)]
    pub yes: bool,
}

/// `--hard-ceiling`: a ratio, or none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ceiling(pub Option<f64>);

fn parse_ceiling(text: &str) -> std::result::Result<Ceiling, String> {
    if text == "off" {
        return Ok(Ceiling(None));
    }
    text.parse::<Ratio>()
        .map(|r| Ceiling(Some(r.0)))
        .map_err(|e| format!("{e}, or off"))
}

fn parse_seconds(text: &str) -> std::result::Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    parse_duration(text).map(|d| d.as_secs().max(1))
}

impl RunArgs {
    pub fn settings(&self) -> Result<Settings> {
        let mut thresholds = Thresholds {
            default: self.threshold.0,
            min_sent: self.min_sent,
            ..Thresholds::default()
        };
        for t in &self.signal_thresholds {
            thresholds.per_signal.insert(t.signal, t.ratio);
        }
        Ok(Settings {
            thresholds,
            policy: Policy {
                consecutive: self.consecutive_breaches,
                ceiling: self.hard_ceiling.0,
                scope: self.gate_scope,
            },
            baseline_seconds: self.baseline,
            soak_seconds: self.soak,
            on_breach: self.on_breach,
            reboot_hook: self.reboot_hook.clone(),
        })
    }

    /// For a `rollback` outside any migration: judged by the defaults.
    pub fn default_settings() -> Settings {
        Settings::default()
    }

    pub fn preflight_options(&self, common: &CommonArgs) -> PreflightOptions {
        PreflightOptions {
            cilium_namespace: common.cilium_namespace.clone(),
            agent_namespace: common.namespace.clone(),
            agent_selector: common.agent_selector.clone(),
            service_cidrs: self.service_cidrs.clone(),
            overrides: self.overrides.clone(),
            node_selector: self.selector.clone(),
        }
    }

    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            order: self.nodes.clone(),
            include_labelled: self.include_labelled,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Kubeconfig file; default: in-cluster, then $KUBECONFIG, ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the migration's state and records.
    #[arg(long, default_value = "crossover")]
    pub namespace: String,
    /// Name of the migration (its state ConfigMap).
    #[arg(long, default_value = "crossover-migration")]
    pub name: String,
    /// Where the CiliumNodeConfigs are, for what is left to do.
    #[arg(long, default_value = "kube-system")]
    pub cilium_namespace: String,
    /// markdown, json, or html: one self-contained page with plots
    /// (`crossover report -o html > report.html`).
    #[arg(long, short = 'o', value_enum, default_value_t = ReportFormat::Markdown)]
    pub format: ReportFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    #[value(alias = "table")]
    Markdown,
    Json,
    Html,
}
