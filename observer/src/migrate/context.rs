//! What every step shares: the API client, the options, the lease, the
//! event recorder, and the way loss is measured.
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::ListParams,
    runtime::events::{Recorder, Reporter},
};

use super::{
    lease::Lease,
    pods,
    record::{EventRecord, NodeRecord},
    state::Settings,
    store::kube_err,
};
use crate::{
    Error, Result,
    cluster::events,
    loss::{Source, client::Client as Reader, cluster::ReadOptions, prometheus::Records},
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
    /// The bearer token sent to the agents: the kubeconfig's or the
    /// service account's.
    pub agent_credentials: Option<crate::loss::client::Credentials>,
    /// The window and ticks of a reading (focus and drill-down set per
    /// reading from the node and the thresholds).
    pub read: ReadOptions,
    /// Where the gate's readings come from.
    pub source: Source,
}

pub struct Context {
    pub client: Client,
    pub options: Options,
    pub settings: Settings,
    pub recorder: Recorder,
    pub lease: Option<Lease>,
    /// Kept-alive connections to the agents (or Prometheus), across
    /// readings.
    pub(super) reader: Reader,
    /// The records the gate reads, with `--source prometheus=URL`, as
    /// [`Context::check_source`] found them: their window is the hold's.
    pub(super) records: std::sync::OnceLock<Records>,
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
            reader: Reader::new(options.agent_timeout)
                .with_credentials(options.agent_credentials.clone()),
            records: std::sync::OnceLock::new(),
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
        let found = pods::get_node(self, node).await.ok();
        let reference = events::node_reference(found.as_ref(), node);
        let event = events::event(reason, &note, "Migrate", warning);
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            eprintln!("crossover: could not record event {reason} on node {node}: {e}");
        }
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
