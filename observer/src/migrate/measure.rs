//! How the driver measures loss: one reading of the whole cluster, from
//! the source the SRE chose (`--source`), judged by the gate.
//!
//! * `agents` (the default): every agent asked for its half of the same
//!   aligned window ([`crate::loss::cluster`]).
//! * `prometheus=URL`: the shipped recording rules' records
//!   ([`crate::loss::prometheus`]), over whole record windows; the hold's
//!   window (what separates consecutive breaches, how long a soak settles)
//!   is theirs. The agent pods are still listed: a node without one, or
//!   one whose agent Prometheus has no series of, is missing. A reading
//!   Prometheus cannot give is missing too (the hold waits a few readings
//!   for it, as for an agent that did not answer); a server without
//!   crossover's rules is refused before anything changes.
//!
//! What only the agents can say is always asked of them: `verify`'s
//! answered probes both ways right after the Cilium agent restarted (a
//! record of them lags a whole window and a scrape).
use std::time::{Duration, SystemTime};

use super::{
    context::{Context, now},
    gate::{self, Breach, Decision},
};
use crate::{
    Result,
    cluster::agents::{self, AgentPods, Found},
    loss::{
        LossRow, Source,
        blind::NodeBlind,
        cluster::{self, ReadOptions},
        dropped::DropRow,
        prometheus,
    },
};

/// One loss reading of the whole cluster.
pub struct Measured {
    /// The cluster totals, then the rows: the node's exactly, drilled
    /// pairs, the worst of the rest.
    pub rows: Vec<LossRow>,
    /// Agents that did not answer, nodes without an agent.
    pub missing: Vec<String>,
    /// End of the window read (Unix ms; 0 when nothing was read).
    pub window_end_ms: u64,
    /// From the agents: how many answered, and the nodes with blind hooks;
    /// `None` from Prometheus, whose records do not name hooks.
    pub hooks: Option<(usize, Vec<NodeBlind>)>,
    /// The kernel's drops over the window: what a breach is explained by.
    pub drops: Vec<DropRow>,
}

impl Context {
    /// Agent URLs and their nodes: named ones, else every agent pod's,
    /// and the nodes without one.
    async fn agents(&self) -> Result<Found> {
        if !self.options.agents.is_empty() {
            return Ok(Found {
                urls: self.options.agents.clone(),
                ..Found::default()
            });
        }
        let how = AgentPods {
            namespace: &self.options.namespace,
            selector: &self.options.agent_selector,
            port: self.options.agent_port,
        };
        agents::find(&self.client, &how).await
    }

    /// Makes sure the source can be read before anything changes: for
    /// Prometheus, that it answers as Prometheus and evaluates crossover's
    /// records; their window becomes the hold's.
    pub async fn check_source(&self) -> Result<()> {
        let Source::Prometheus(url) = &self.options.source else {
            return Ok(());
        };
        let records = prometheus::records(&self.reader, url, SystemTime::now()).await?;
        eprintln!(
            "crossover: the gate reads {} from Prometheus at {url}: windows of {} (records of {}, \
             evaluated every {})",
            records.sent,
            humantime::format_duration(records.reading_window(self.options.read.window)),
            humantime::format_duration(records.window),
            humantime::format_duration(records.interval),
        );
        let _ = self.records.set(records);
        Ok(())
    }

    /// The window one reading covers: the agents', or whole record
    /// windows of Prometheus.
    pub fn window(&self) -> Duration {
        match self.records.get() {
            Some(r) if !self.options.source.is_agents() => {
                r.reading_window(self.options.read.window)
            }
            _ => self.options.read.window,
        }
    }

    /// How long after a change the next reading holds only what followed
    /// it: a window, plus, from Prometheus, one evaluation of the rules.
    pub fn settle_time(&self) -> Duration {
        match self.records.get() {
            Some(r) if !self.options.source.is_agents() => self.window() + r.interval,
            _ => self.window(),
        }
    }

    /// One reading from the gate's source, the `focus` node's rows
    /// exactly; a delivery total over the threshold is drilled down to
    /// the pairs responsible (agents) or the worst rows listed (Prometheus).
    pub async fn measure(&self, focus: Option<&str>) -> Result<Measured> {
        let Source::Prometheus(url) = &self.options.source else {
            return self.measure_agents(focus).await;
        };
        let found = self.agents().await?;
        let options = ReadOptions {
            expect: found.nodes,
            ..self.read_options(focus)
        };
        let mut missing = found.missing;
        match prometheus::read(&self.reader, url, &options, SystemTime::now()).await {
            Ok(reading) => {
                missing.extend(reading.failed.iter().map(|f| {
                    if f.agent == *url {
                        format!("from Prometheus: {}", f.error)
                    } else {
                        format!("agent {} (per Prometheus): {}", f.agent, f.error)
                    }
                }));
                Ok(Measured {
                    rows: reading.all_rows().cloned().collect(),
                    missing,
                    window_end_ms: reading.to_ms,
                    hooks: None,
                    drops: reading.drops,
                })
            }
            // Not this reading: missing, as an agent that did not answer.
            Err(e) => {
                missing.push(format!("no reading: {e}"));
                Ok(Measured {
                    rows: Vec::new(),
                    missing,
                    window_end_ms: 0,
                    hooks: None,
                    drops: Vec::new(),
                })
            }
        }
    }

    /// One reading of every agent, whatever the gate's source.
    pub async fn measure_agents(&self, focus: Option<&str>) -> Result<Measured> {
        let found = self.agents().await?;
        let reading = cluster::read(&self.reader, &found.urls, &self.read_options(focus)).await;
        let mut missing = found.missing;
        missing.extend(reading.failed.iter().map(|f| match f.refused {
            true => format!("agent {} refused the driver: {}", f.agent, f.error),
            // The reason says whether it did not answer or answered junk.
            false => format!("agent {}: {}", f.agent, f.error),
        }));
        Ok(Measured {
            rows: reading.all_rows().cloned().collect(),
            missing,
            window_end_ms: reading.to_ms,
            hooks: Some((reading.answered, reading.blind)),
            drops: reading.drops,
        })
    }

    fn read_options(&self, focus: Option<&str>) -> ReadOptions {
        ReadOptions {
            focus: focus.into_iter().map(str::to_owned).collect(),
            min_sent: self.settings.thresholds.min_sent,
            ..self.options.read.clone()
        }
    }

    /// Measures and judges, with the node's stuck pods, in the policy's
    /// scope around the node.
    pub async fn judge(&self, node: &str) -> Result<(Decision, Vec<LossRow>)> {
        let measured = self.measure(Some(node)).await?;
        let stuck = self.stuck(node).await?;
        let mut decision = gate::judge(
            &self.settings.thresholds,
            self.settings.policy.scope,
            Some(node),
            &measured.rows,
            measured.missing,
            stuck,
            now(),
        );
        decision.window_end_ms = measured.window_end_ms;
        decision.source = self.options.source.clone();
        Breach::explain(&mut decision.breaches, &measured.drops, &measured.rows);
        Ok((decision, measured.rows))
    }
}
