//! What every step shares: the API client, the options, the lease, the
//! event recorder, and the way loss is measured.
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::{
    gate::{self, Decision},
    lease::Lease,
    pods,
    record::{EventRecord, NodeRecord},
    state::Settings,
    store::kube_err,
};
use crate::{
    Error, Result,
    cluster::agents::{self, AgentPods},
    loss::{
        LossRow,
        client::Client as Reader,
        cluster::{self, ReadOptions},
    },
};

/// Options that may differ between a run and its resume (timeouts, where
/// things are), as opposed to [`Settings`], which judge the migration.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub cilium_namespace: String,
    pub cilium_selector: String,
    pub agent_selector: String,
    pub agent_port: u16,
    /// Agents named by URL instead of found through their pods.
    pub agents: Vec<String>,
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    pub verify_timeout: Duration,
    pub hook_timeout: Duration,
    pub evict_bare_pods: bool,
    /// How long a pod may wait for its sandbox before it counts as stuck.
    pub sandbox_grace: Duration,
    pub poll: Duration,
    pub gate_interval: Duration,
    pub agent_timeout: Duration,
    /// The window and ticks of a reading (focus and drill-down set per
    /// reading from the node and the thresholds).
    pub read: ReadOptions,
}

pub struct Context {
    pub client: Client,
    pub options: Options,
    pub settings: Settings,
    pub recorder: Recorder,
    pub lease: Option<Lease>,
    /// Kept-alive connections to the agents, across readings.
    reader: Reader,
}

/// One loss reading of the whole cluster.
pub struct Measured {
    /// The cluster totals, then the rows: the node's exactly, drilled
    /// pairs, the worst of the rest.
    pub rows: Vec<LossRow>,
    /// Agents that did not answer, nodes without an agent.
    pub missing: Vec<String>,
    /// End of the window read (Unix ms; 0 when no agent answered).
    pub window_end_ms: u64,
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Context {
    pub fn new(client: Client, options: Options, settings: Settings, lease: Option<Lease>) -> Self {
        let reporter = Reporter {
            controller: "crossover-migrate".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Context {
            reader: Reader::new(options.agent_timeout),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            options,
            settings,
            lease,
        }
    }

    /// Fails once the lease is gone: another driver may be running.
    pub fn check_lease(&self) -> Result<()> {
        match &self.lease {
            Some(l) if l.lost() => Err(Error::Migration(
                "lost the migration Lease (another driver took it, or the API was unreachable \
                 for a whole lease duration): stopping without further changes"
                    .into(),
            )),
            _ => Ok(()),
        }
    }

    /// An Event on the node, so `kubectl describe node` tells the story.
    /// Best effort: a failed event is reported, never fatal.
    /// Also kept in the node's record, for the report.
    pub async fn event(&self, record: &mut NodeRecord, reason: &str, note: String, warning: bool) {
        let node = record.node.clone();
        let node = node.as_str();
        record.events.push(EventRecord {
            at: now(),
            reason: reason.into(),
            warning,
            note: note.clone(),
        });
        let reference = match pods::get_node(self, node).await {
            Ok(n) => n.object_ref(&()),
            Err(_) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(<Node as k8s_openapi::Resource>::KIND.into()),
                name: Some(node.into()),
                ..Default::default()
            },
        };
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Migrate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            eprintln!("crossover: could not record event {reason} on node {node}: {e}");
        }
    }

    /// Agent URLs by node: named ones, else every agent pod's.
    async fn agents(&self) -> Result<(Vec<String>, Vec<String>)> {
        if !self.options.agents.is_empty() {
            return Ok((self.options.agents.clone(), Vec::new()));
        }
        let how = AgentPods {
            namespace: &self.options.namespace,
            selector: &self.options.agent_selector,
            port: self.options.agent_port,
        };
        let found = agents::find(&self.client, &how).await?;
        Ok((found.urls, found.missing))
    }

    /// One reading of every agent, the `focus` node's rows exactly; a
    /// delivery total over the threshold is drilled down to the pairs
    /// responsible.
    pub async fn measure(&self, focus: Option<&str>) -> Result<Measured> {
        let (agents, mut missing) = self.agents().await?;
        let thresholds = &self.settings.thresholds;
        let options = ReadOptions {
            focus: focus.into_iter().map(str::to_owned).collect(),
            min_sent: thresholds.min_sent,
            ..self.options.read.clone()
        };
        let reading = cluster::read(&self.reader, &agents, &options).await;
        missing.extend(
            reading
                .failed
                .iter()
                .map(|f| format!("agent {}: {}", f.agent, f.error)),
        );
        Ok(Measured {
            rows: reading.all_rows().cloned().collect(),
            missing,
            window_end_ms: reading.to_ms,
        })
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
        Ok((decision, measured.rows))
    }

    /// Pods on the node that cannot get a sandbox: a
    /// `FailedCreatePodSandBox` event (e.g. "No more IPs available"), or
    /// still creating after the grace period.
    pub async fn stuck(&self, node: &str) -> Result<Vec<String>> {
        let pods = pods::on_node(self, node).await?;
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(self.client.clone());
        let failed = events
            .list(&ListParams::default().fields("reason=FailedCreatePodSandBox"))
            .await
            .map_err(kube_err("listing FailedCreatePodSandBox events"))?
            .items;
        let grace = self.options.sandbox_grace;
        let mut stuck = Vec::new();
        // A pod without a sandbox stays Pending; a crash-looping app is
        // Running and none of the network's business.
        let pending = |p: &Pod| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
                && !pods::is_host_network(p)
                && p.metadata.deletion_timestamp.is_none()
        };
        for pod in pods.iter().filter(|p| pending(p)) {
            let why = failed.iter().rev().find(|e| {
                e.involved_object.uid.is_some() && e.involved_object.uid == pod.metadata.uid
                    || e.involved_object.name == pod.metadata.name
                        && e.involved_object.namespace == pod.metadata.namespace
            });
            let age = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            match why {
                Some(e) => stuck.push(format!(
                    "{} on {node}: {}",
                    pods::name(pod),
                    e.message.as_deref().unwrap_or("FailedCreatePodSandBox")
                )),
                None if age > grace => stuck.push(format!(
                    "{} on {node}: not ready after {}s",
                    pods::name(pod),
                    age.as_secs()
                )),
                None => {}
            }
        }
        Ok(stuck)
    }
}
