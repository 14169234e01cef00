//! The migration's progress, as Prometheus sees it: the driver is a
//! command, not a scrape target, and writes where it is to its state
//! ConfigMap; every agent watches that one object (kube-rs, the same
//! cluster watches as its shape) and exports what it holds. Every agent
//! exports the same values, so rules and dashboards aggregate with `max`.
//! A fixed set of series whatever the cluster's size: phases, steps and
//! verdicts, never a series per node.
use k8s_openapi::api::core::v1::ConfigMap;

use crate::{
    exposition::family,
    migrate::{
        decode_state,
        state::{Phase, State, Step},
    },
};

/// The phase when there is no migration, and when its state cannot be
/// read (another version's).
const NONE: &str = "none";
const UNREADABLE: &str = "unreadable";

/// Writes the `crossover_migration_*` families of `state` (the ConfigMap
/// the agent watches; `None` when there is none) for the agent on `node`.
pub fn write(out: &mut String, node: &str, config_map: Option<&ConfigMap>) {
    let state: Option<Result<State, String>> =
        config_map.map(|cm| decode_state(cm).map_err(|e| e.to_string()));
    let phase = match &state {
        None => NONE,
        Some(Err(_)) => UNREADABLE,
        Some(Ok(s)) => s.phase.label(),
    };
    let state = state.and_then(Result::ok);
    let mut f = family(
        out,
        "crossover_migration_phase",
        "gauge",
        "1 for the phase of the migration in the driver's state ConfigMap (none without one, \
         unreadable for another version's), 0 for every other.",
    );
    for p in Phase::LABELS.iter().chain(&[NONE, UNREADABLE]) {
        f.sample(&[("node", node), ("phase", p)], u64::from(*p == phase));
    }

    let planned = state.as_ref().map_or(0, |s| s.nodes.len());
    let done = state.as_ref().map_or(0, |s| {
        s.nodes.iter().filter(|n| n.step == Step::Done).count()
    });
    let mut f = family(
        out,
        "crossover_migration_nodes",
        "gauge",
        "Nodes of the migration's plan (planned), and of those the ones done.",
    );
    f.sample(&[("node", node), ("progress", "planned")], planned);
    f.sample(&[("node", node), ("progress", "done")], done);

    // The step the node under migration is at (the next to run; where it
    // stopped, on a halt).
    let current = state
        .as_ref()
        .and_then(|s| Some(s.nodes[s.current()?].step))
        .filter(|_| phase != "done");
    let mut f = family(
        out,
        "crossover_migration_step",
        "gauge",
        "1 for the step the node under migration is at (the next to run, or where it halted), \
         0 for every other; all 0 when no node is.",
    );
    for step in Step::ALL {
        f.sample(
            &[("node", node), ("step", step.label())],
            u64::from(current == Some(*step)),
        );
    }

    let gate = state.as_ref().map(|s| s.gate).unwrap_or_default();
    let mut f = family(
        out,
        "crossover_migration_gate_decisions_total",
        "counter",
        "The gate's decisions over the migration so far, by verdict (pass, pending, halt), as the \
         driver counted them at the end of each step.",
    );
    for (verdict, n) in gate.by_verdict() {
        f.sample(&[("node", node), ("verdict", verdict)], n);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::migrate::{
        gate::Verdict,
        plan::Plan,
        state::{GateTally, Settings},
    };

    fn config_map(state: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([("state.json".into(), state.into())])),
            ..ConfigMap::default()
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn the_state_becomes_phase_progress_step_and_decisions() {
        let plan = Plan::of(&["a", "b", "c"]);
        let mut state = State::new(&plan, Settings::default(), "t0".into());
        state.nodes[0].step = Step::Done;
        state.nodes[1].step = Step::Soak;
        state.phase = Phase::Halted {
            node: "b".into(),
            step: Step::Soak,
            reason: "loss".into(),
            at: "t1".into(),
        };
        let mut tally = GateTally::default();
        for v in [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Pending,
            Verdict::Halt,
        ] {
            tally.add(Some(v));
        }
        state.gate = tally;
        let mut out = String::new();
        let cm = config_map(&serde_json::to_string(&state).unwrap());
        write(&mut out, "n1", Some(&cm));
        let s = |series: &str| sample(&out, series).to_owned();
        assert_eq!(
            s(r#"crossover_migration_phase{node="n1",phase="halted"}"#),
            "1"
        );
        assert_eq!(
            s(r#"crossover_migration_phase{node="n1",phase="running"}"#),
            "0"
        );
        assert_eq!(
            s(r#"crossover_migration_nodes{node="n1",progress="planned"}"#),
            "3"
        );
        assert_eq!(
            s(r#"crossover_migration_nodes{node="n1",progress="done"}"#),
            "1"
        );
        assert_eq!(s(r#"crossover_migration_step{node="n1",step="soak"}"#), "1");
        assert_eq!(
            out.matches("crossover_migration_step{").count(),
            Step::ALL.len()
        );
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("crossover_migration_step{") && l.ends_with(" 1"))
                .count(),
            1
        );
        assert_eq!(
            s(r#"crossover_migration_gate_decisions_total{node="n1",verdict="pass"}"#),
            "2"
        );
        assert_eq!(
            s(r#"crossover_migration_gate_decisions_total{node="n1",verdict="halt"}"#),
            "1"
        );

        // Done: no step; none: every family at 0 but the phase;
        // another version's state: unreadable.
        state.phase = Phase::Done { at: "t2".into() };
        for n in &mut state.nodes {
            n.step = Step::Done;
        }
        let mut out = String::new();
        write(
            &mut out,
            "n1",
            Some(&config_map(&serde_json::to_string(&state).unwrap())),
        );
        assert_eq!(
            sample(
                &out,
                r#"crossover_migration_nodes{node="n1",progress="done"}"#
            ),
            "3"
        );
        assert!(
            !out.lines()
                .any(|l| l.starts_with("crossover_migration_step{") && l.ends_with(" 1")),
            "{out}"
        );
        let mut out = String::new();
        write(&mut out, "n1", None);
        assert_eq!(
            sample(&out, r#"crossover_migration_phase{node="n1",phase="none"}"#),
            "1"
        );
        assert_eq!(
            sample(
                &out,
                r#"crossover_migration_nodes{node="n1",progress="planned"}"#
            ),
            "0"
        );
        let mut out = String::new();
        write(&mut out, "n1", Some(&config_map("{\"version\": 9}")));
        assert_eq!(
            sample(
                &out,
                r#"crossover_migration_phase{node="n1",phase="unreadable"}"#
            ),
            "1"
        );
    }
}
