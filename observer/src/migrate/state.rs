//! Where the migration is: what a restarted driver reads to continue
//! without repeating finished steps. Kept small (it is rewritten at every
//! step transition); the figures go to the per-node records.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    analysis::Policy,
    gate::{Thresholds, Verdict},
    plan::Plan,
};

pub const STATE_VERSION: u32 = 1;

/// The steps of one node, in order. A node's `step` is the next one to
/// run, so a step that finished is never run again after a crash; a step
/// that was interrupted runs again, which is why each is idempotent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Baseline,
    Cordon,
    Drain,
    Label,
    RestartCilium,
    Reboot,
    RestartLegacy,
    Verify,
    Soak,
    Uncordon,
    Done,
}

impl Step {
    pub const ALL: &'static [Step] = &[
        Step::Baseline,
        Step::Cordon,
        Step::Drain,
        Step::Label,
        Step::RestartCilium,
        Step::Reboot,
        Step::RestartLegacy,
        Step::Verify,
        Step::Soak,
        Step::Uncordon,
        Step::Done,
    ];

    pub fn next(self) -> Step {
        let i = Step::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Step::ALL.get(i + 1).copied().unwrap_or(Step::Done)
    }

    pub fn label(self) -> &'static str {
        match self {
            Step::Baseline => "baseline",
            Step::Cordon => "cordon",
            Step::Drain => "drain",
            Step::Label => "label",
            Step::RestartCilium => "restart_cilium",
            Step::Reboot => "reboot",
            Step::RestartLegacy => "restart_legacy",
            Step::Verify => "verify",
            Step::Soak => "soak",
            Step::Uncordon => "uncordon",
            Step::Done => "done",
        }
    }

    /// PascalCase, as Kubernetes Event reasons are written.
    pub fn reason(self) -> &'static str {
        match self {
            Step::Baseline => "MigrationBaseline",
            Step::Cordon => "MigrationCordon",
            Step::Drain => "MigrationDrain",
            Step::Label => "MigrationLabel",
            Step::RestartCilium => "MigrationRestartCilium",
            Step::Reboot => "MigrationReboot",
            Step::RestartLegacy => "MigrationRestartLegacy",
            Step::Verify => "MigrationVerify",
            Step::Soak => "MigrationSoak",
            Step::Uncordon => "MigrationUncordon",
            Step::Done => "MigrationDone",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    Running,
    /// Stopped by the gate or an error; `resume` continues at `step`.
    Halted {
        node: String,
        step: Step,
        reason: String,
        at: String,
    },
    /// Stopped by `abort`; `resume` continues like after a halt.
    Aborted {
        at: String,
    },
    Done {
        at: String,
    },
}

impl Phase {
    /// Its name, as the state and the agents' metrics write it.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Halted { .. } => "halted",
            Phase::Aborted { .. } => "aborted",
            Phase::Done { .. } => "done",
        }
    }

    pub const LABELS: [&'static str; 4] = ["running", "halted", "aborted", "done"];
}

/// The gate's decisions, by verdict: counted by the node's record as they
/// are taken, added to the state's when the step ends, and exported by
/// the agents from there (docs/metrics.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateTally {
    pub pass: u64,
    pub pending: u64,
    pub halt: u64,
}

impl GateTally {
    pub fn add(&mut self, verdict: Option<Verdict>) {
        match verdict {
            Some(Verdict::Pass) => self.pass += 1,
            Some(Verdict::Pending) => self.pending += 1,
            Some(Verdict::Halt) => self.halt += 1,
            None => {}
        }
    }

    /// What `self` counted since it was `before`.
    pub fn since(self, before: GateTally) -> GateTally {
        GateTally {
            pass: self.pass.saturating_sub(before.pass),
            pending: self.pending.saturating_sub(before.pending),
            halt: self.halt.saturating_sub(before.halt),
        }
    }

    pub fn plus(self, other: GateTally) -> GateTally {
        GateTally {
            pass: self.pass + other.pass,
            pending: self.pending + other.pending,
            halt: self.halt + other.halt,
        }
    }

    /// (verdict, count), every verdict.
    pub fn by_verdict(self) -> [(&'static str, u64); 3] {
        [
            ("pass", self.pass),
            ("pending", self.pending),
            ("halt", self.halt),
        ]
    }
}

/// What to do when the gate closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnBreach {
    /// Stop with the node cordoned, for a human to look.
    Halt,
    /// Put the node back on the legacy CNI, uncordon it, then stop.
    Rollback,
}

/// The settings a run was started with; `resume` keeps them so a resumed
/// migration is judged like the rest of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub thresholds: Thresholds,
    /// How readings add up to a halt; the defaults for a state written
    /// before there was a policy.
    #[serde(default)]
    pub policy: Policy,
    pub baseline_seconds: u64,
    pub soak_seconds: u64,
    pub on_breach: OnBreach,
    pub reboot_hook: Option<String>,
}

/// The flags' defaults (`crossover migrate run --help`): what a
/// `rollback` outside any migration is judged by.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            thresholds: Thresholds::default(),
            policy: Policy::default(),
            baseline_seconds: 10,
            soak_seconds: 30,
            on_breach: OnBreach::Halt,
            reboot_hook: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub control_plane: bool,
    /// The next step to run.
    pub step: Step,
    /// UID of the Cilium agent pod deleted by `restart_cilium`, written
    /// before the delete: after a crash, a pod with another UID is its
    /// replacement, and the same UID means the delete never happened.
    #[serde(default)]
    pub cilium_pod_deleted: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub started: String,
    pub phase: Phase,
    pub settings: Settings,
    pub nodes: Vec<NodeState>,
    /// Nodes the plan left out, kept for the report.
    #[serde(default)]
    pub skipped: Vec<super::plan::Skipped>,
    /// Who started it (`$USER@$HOSTNAME`), for the report.
    #[serde(default)]
    pub started_by: Option<String>,
    /// The crossover version that started it.
    #[serde(default)]
    pub crossover_version: Option<String>,
    /// The gate's decisions over every node so far.
    #[serde(default)]
    pub gate: GateTally,
}

/// `$USER@$HOSTNAME`, or what of it the environment has (a Job in the
/// cluster has only its pod's host name).
pub fn who() -> String {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let host = var("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
    });
    match (var("USER"), host) {
        (Some(user), Some(host)) => format!("{user}@{host}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "unknown".into(),
    }
}

impl State {
    pub fn new(plan: &Plan, settings: Settings, started: String) -> Self {
        State {
            version: STATE_VERSION,
            started,
            phase: Phase::Running,
            settings,
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeState {
                    name: n.name.clone(),
                    control_plane: n.control_plane,
                    step: Step::Baseline,
                    cilium_pod_deleted: None,
                })
                .collect(),
            skipped: plan.skipped.clone(),
            started_by: Some(who()),
            crossover_version: Some(env!("CARGO_PKG_VERSION").into()),
            gate: GateTally::default(),
        }
    }

    /// The node being migrated: the first not done. Nodes go one at a time.
    pub fn current(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.step != Step::Done)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    pub fn render(&self) -> String {
        let phase = match &self.phase {
            Phase::Running => "running".to_string(),
            Phase::Halted {
                node,
                step,
                reason,
                at,
            } => format!("HALTED at {at} on node {node}, step {step}:\n  {reason}"),
            Phase::Aborted { at } => format!("aborted at {at}"),
            Phase::Done { at } => format!("done at {at}"),
        };
        let mut out = format!("migration started {}: {phase}\n", self.started);
        let mut table = crate::table::new(&["node", "state", "step"], 3);
        for n in &self.nodes {
            let marker = match n.step {
                Step::Done => "done",
                Step::Baseline => "pending",
                _ => "IN PROGRESS",
            };
            table.add_row([n.name.as_str(), marker, n.step.label()]);
        }
        out += &crate::table::render(&table);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_walk_the_documented_order_and_end_done() {
        let mut s = Step::Baseline;
        let mut walked = vec![s];
        while s != Step::Done {
            s = s.next();
            walked.push(s);
        }
        assert_eq!(walked, Step::ALL);
        assert_eq!(Step::Done.next(), Step::Done);
    }

    #[test]
    fn the_current_node_is_the_first_not_done_and_state_round_trips() {
        let plan = Plan::of(&["a", "b"]);
        let mut state = State::new(&plan, Settings::default(), "t0".into());
        assert_eq!(state.current(), Some(0));
        state.nodes[0].step = Step::Done;
        state.nodes[1].step = Step::Drain;
        assert_eq!(state.current(), Some(1));
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"step\":\"drain\""), "{json}");
        let back: State = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        state.nodes[1].step = Step::Done;
        assert_eq!(state.current(), None);
    }
}
