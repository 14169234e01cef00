//! The migration's state and records, in ConfigMaps of the crossover
//! namespace: in the cluster, so a driver started anywhere finds them, and
//! written with the resourceVersion it read, so two writers never silently
//! overwrite each other (an `abort` from another terminal shows up as a
//! conflict the running driver resolves by reading again).
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PostParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{record::NodeRecord, state::State};
use crate::{Error, Result};

const STATE_KEY: &str = "state.json";
const RECORD_KEY: &str = "record.json";
/// Label on every ConfigMap of a migration, valued with its name.
pub const MIGRATION_NAME_LABEL: &str = "crossover.io/migration";

pub fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |e| Error::Kube {
        context,
        reason: e.to_string(),
    }
}

pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}

pub struct Store {
    api: Api<ConfigMap>,
    name: String,
    /// resourceVersion of the state as last read or written.
    version: Option<String>,
}

impl Store {
    pub fn new(client: &Client, namespace: &str, name: &str) -> Self {
        Store {
            api: Api::namespaced(client.clone(), namespace),
            name: name.into(),
            version: None,
        }
    }

    pub async fn load(&mut self) -> Result<Option<State>> {
        let Some(cm) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(kube_err(format!("reading ConfigMap {}", self.name)))?
        else {
            self.version = None;
            return Ok(None);
        };
        self.version = cm.metadata.resource_version.clone();
        decode(&cm, STATE_KEY).map(Some)
    }

    /// Creates the state of a new migration; refuses to replace one.
    pub async fn create(&mut self, state: &State) -> Result<()> {
        let cm = self.config_map(&self.name, STATE_KEY, state)?;
        let made = self
            .api
            .create(&PostParams::default(), &cm)
            .await
            .map_err(|e| {
                if is_status(&e, 409) {
                    Error::Migration(format!(
                        "a migration already exists (ConfigMap {}): `crossover migrate status` \
                         shows it, `resume` continues it; delete the ConfigMap to start over",
                        self.name
                    ))
                } else {
                    kube_err(format!("creating ConfigMap {}", self.name))(e)
                }
            })?;
        self.version = made.metadata.resource_version;
        Ok(())
    }

    /// Writes `state` over the version last read. `Ok(false)` on a conflict:
    /// someone else wrote it; the caller reads again and decides.
    pub async fn save(&mut self, state: &State) -> Result<bool> {
        let mut cm = self.config_map(&self.name, STATE_KEY, state)?;
        cm.metadata.resource_version = self.version.clone();
        match self
            .api
            .replace(&self.name, &PostParams::default(), &cm)
            .await
        {
            Ok(written) => {
                self.version = written.metadata.resource_version;
                Ok(true)
            }
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(kube_err(format!("writing ConfigMap {}", self.name))(e)),
        }
    }

    fn record_name(&self, node: &str) -> String {
        format!("{}-node-{node}", self.name)
    }

    pub async fn load_record(&self, node: &str) -> Result<NodeRecord> {
        let name = self.record_name(node);
        match self
            .api
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("reading ConfigMap {name}")))?
        {
            Some(cm) => decode(&cm, RECORD_KEY),
            None => Ok(NodeRecord::new(node)),
        }
    }

    /// Records are written by the lease holder only, so the last write wins.
    pub async fn save_record(&self, record: &NodeRecord) -> Result<()> {
        let name = self.record_name(&record.node);
        let cm = self.config_map(&name, RECORD_KEY, record)?;
        let fail = || kube_err(format!("writing ConfigMap {name}"));
        match self.api.replace(&name, &PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => self
                .api
                .create(&PostParams::default(), &cm)
                .await
                .map(drop)
                .map_err(fail()),
            Err(e) => Err(fail()(e)),
        }
    }

    /// Every node's record, in no particular order.
    pub async fn records(&self) -> Result<Vec<NodeRecord>> {
        let list = self
            .api
            .list(&ListParams::default().labels(&format!("{MIGRATION_NAME_LABEL}={}", self.name)))
            .await
            .map_err(kube_err("listing the migration's ConfigMaps"))?;
        list.items
            .iter()
            .filter(|cm| cm.data.as_ref().is_some_and(|d| d.contains_key(RECORD_KEY)))
            .map(|cm| decode(cm, RECORD_KEY))
            .collect()
    }

    fn config_map<T: Serialize>(&self, name: &str, key: &str, value: &T) -> Result<ConfigMap> {
        let json = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Migration(format!("encoding {key}: {e}")))?;
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), "crossover".into()),
                    (MIGRATION_NAME_LABEL.into(), self.name.clone()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(key.into(), json)])),
            ..Default::default()
        })
    }
}

/// The state a migration's ConfigMap holds (what the agents export).
pub fn decode_state(cm: &ConfigMap) -> Result<State> {
    decode(cm, STATE_KEY)
}

fn decode<T: DeserializeOwned>(cm: &ConfigMap, key: &str) -> Result<T> {
    let name = cm.metadata.name.as_deref().unwrap_or("?");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| Error::Migration(format!("ConfigMap {name} has no key {key}")))?;
    serde_json::from_str(text).map_err(|e| {
        Error::Migration(format!(
            "ConfigMap {name} key {key} is not a crossover migration {key} of this version: {e}"
        ))
    })
}
