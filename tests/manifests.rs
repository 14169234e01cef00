//! The Kubernetes manifests in `manifests/`, without a cluster: every
//! kustomization is built by the real `kubectl kustomize` (what users
//! apply), every YAML file is listed by a kustomization, and every object
//! built parses into its k8s-openapi type with nothing left over (a misspelt
//! field fails), and the objects agree with each other and with the real
//! `crossover` CLI: container args parse, env vars feed real flags, RBAC
//! covers exactly what the agent watches, the Service and ServiceMonitor
//! find the agent's `metrics` port, the bpffs mount holds `--pin-path`.
//! Needs no root: only `cargo build` of the `crossover` binary.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use clap::{Args, FromArgMatches};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{
            Container, ContainerPort, Namespace, PodSpec, Probe, Service, ServiceAccount,
            Toleration,
        },
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use observer::{
    agent::AgentArgs,
    cluster::cilium::{CiliumNode, CiliumNodeConfig},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

const AGENT: &str = "crossover-agent";
const PROBE: &str = "crossover-probe";
const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The one ConfigMap the agent reads, by a `metadata.name` field selector
/// (observer/src/cluster/mod.rs).
const CILIUM_CONFIG: &str = "cilium-config";
/// The migration driver's state ConfigMap, by its default name.
const MIGRATION_STATE: &str = "crossover-migration";
/// What the probe DaemonSet runs: kept exactly so (the probe subcommand).
const PROBE_ARGS: [&str; 3] = ["probe", "--listen", "0.0.0.0:9191"];
/// docs/restarts.md at 100k flows: RSS after the ageing sweeps, growth while
/// a snapshot is held, FLOWS's kernel memory at the default capacity.
const RSS_100K: u64 = 96_000_000;
const SNAPSHOT_100K: u64 = 30_000_000;
const FLOWS_MAP: u64 = 25_200_000;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

// ---------------------------------------------------------------- reading

/// A kustomization: only the fields used here, anything else fails.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    config_map_generator: Vec<ConfigMapGenerator>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<Image>,
}

/// A ConfigMap kustomize makes from files (the Grafana dashboard).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigMapGenerator {
    name: String,
    namespace: String,
    files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<GeneratorOptions>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_name_suffix_hash: Option<bool>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

/// A kustomization's `images:` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Image {
    name: String,
    new_name: String,
    new_tag: String,
}

/// Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), which
/// k8s-openapi does not have: the fields used, anything else fails.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<NamespaceSelector>,
    endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_label: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    any: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    match_names: Vec<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scrape_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    honor_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    relabelings: Vec<Relabeling>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    metric_relabelings: Vec<Relabeling>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    source_labels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    separator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
}

/// `value` as a `T`, and back to exactly `value`: k8s-openapi ignores
/// fields it does not know, so a misspelt or misplaced field only shows as
/// a difference on the way back. Every difference is named by its path.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    diff("", value, &back, &mut differences);
    if differences.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "not read as written into {}:\n  {}",
            std::any::type_name::<T>(),
            differences.join("\n  ")
        ))
    }
}

fn diff(path: &str, written: &Value, read: &Value, out: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (key, value) in w {
                let here = format!("{path}.{key}");
                match r.get(key) {
                    Some(back) => diff(&here, value, back, out),
                    None => out.push(format!("{here}: no such field (misspelt or misplaced?)")),
                }
            }
            for key in r.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{key}: appeared on the way back"));
            }
        }
        (Value::Array(w), Value::Array(r)) if w.len() == r.len() => {
            for (i, (w, r)) in w.iter().zip(r).enumerate() {
                diff(&format!("{path}[{i}]"), w, r, out);
            }
        }
        (w, r) if w == r => {}
        (w, r) => out.push(format!("{path}: {w} read back as {r}")),
    }
}

/// Every document of a YAML file (`---` separated), as JSON values; empty
/// documents are skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    yaml_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The real kustomize, as users run it: `kubectl kustomize DIR`. kubectl
/// is preinstalled on these machines (it is no Debian package); without
/// it the test fails saying so rather than checking something else.
fn kustomize_build(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `kubectl kustomize {}`: {e}. The manifest checks read what the real \
                 kustomize builds: install kubectl (https://kubernetes.io/docs/tasks/tools/) \
                 and put it on PATH",
                dir.display()
            )
        });
    assert!(
        out.status.success(),
        "`kubectl kustomize {}` failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    yaml_documents(&text)
        .unwrap_or_else(|e| panic!("`kubectl kustomize {}` output: {e}", dir.display()))
}

/// The files a kustomization (directory) takes in, its nested
/// kustomizations' included, in order.
fn kustomization_files(dir: &Path, kustomizations: &mut BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let path = dir.join("kustomization.yaml");
    assert!(path.is_file(), "{}: no kustomization.yaml", dir.display());
    kustomizations.insert(path.canonicalize().unwrap());
    let k = kustomization(dir);
    for generator in &k.config_map_generator {
        for file in &generator.files {
            assert!(
                dir.join(file).is_file(),
                "{}: configMapGenerator {} takes {file}, which does not exist",
                dir.display(),
                generator.name
            );
        }
    }
    let mut files = Vec::new();
    for resource in &k.resources {
        let target = dir.join(resource);
        if target.is_dir() {
            files.extend(kustomization_files(&target, kustomizations));
        } else {
            assert!(
                target.is_file(),
                "{}: lists {resource}, which does not exist",
                path.display()
            );
            files.push(target.canonicalize().unwrap());
        }
    }
    let unique: BTreeSet<&PathBuf> = files.iter().collect();
    assert_eq!(
        unique.len(),
        files.len(),
        "{}: a file is listed twice",
        path.display()
    );
    files
}

/// `dir/kustomization.yaml`, strictly.
fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let docs = documents(&path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    let k: Kustomization = strict(&docs[0]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (k.api_version.as_str(), k.kind.as_str()),
        ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        "{}",
        path.display()
    );
    k
}

/// Every YAML file under `dir`.
fn yaml_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.insert(path.canonicalize().unwrap());
        }
    }
}

/// Prometheus Operator's PrometheusRule (monitoring.coreos.com/v1): its
/// spec is a Prometheus rules file, which tests/prometheus.rs runs through
/// promtool and a real server; here only its shape.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RuleGroups,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleGroups {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alert: Option<String>,
    expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// (apiVersion, kind, namespace, name) of an object.
type Id = (String, String, String, String);

/// Every object of the manifests, by type: the union of what `kubectl
/// kustomize` builds from each kustomization under manifests/, which is
/// what users apply.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    services: Vec<Service>,
    service_monitors: Vec<ServiceMonitor>,
    /// The Grafana dashboard, generated from its JSON file.
    config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    prometheus_rules: Vec<PrometheusRule>,
    /// Every object built, by id: one object that two kustomizations both
    /// build must come out the same from both.
    objects: BTreeMap<Id, Value>,
    /// Each kustomization (its directory under manifests/, "" for
    /// manifests/ itself) and the ids of what it builds.
    builds: BTreeMap<String, BTreeSet<Id>>,
}

impl Manifests {
    /// Builds every kustomization under manifests/ with `kubectl
    /// kustomize`; fails on a YAML file none lists.
    fn load() -> Manifests {
        static LOADED: OnceLock<Vec<(String, Vec<Value>)>> = OnceLock::new();
        let root = manifests_dir();
        let built = LOADED.get_or_init(|| {
            let mut kustomizations = BTreeSet::new();
            let mut listed = BTreeSet::new();
            let mut all = BTreeSet::new();
            yaml_files(&root, &mut all);
            let dirs: Vec<PathBuf> = all
                .iter()
                .filter(|p| p.ends_with("kustomization.yaml"))
                .map(|k| k.parent().unwrap().to_path_buf())
                .collect();
            for dir in &dirs {
                listed.extend(kustomization_files(dir, &mut kustomizations));
            }
            let unlisted: Vec<_> = all
                .iter()
                .filter(|p| !listed.contains(*p) && !kustomizations.contains(*p))
                .collect();
            assert!(
                unlisted.is_empty(),
                "YAML files no kustomization.yaml lists: {unlisted:?}"
            );
            let root = root.canonicalize().unwrap();
            dirs.iter()
                .map(|dir| {
                    let name = dir.strip_prefix(&root).unwrap().display().to_string();
                    (name, kustomize_build(dir))
                })
                .collect()
        });
        let mut manifests = Manifests::default();
        for (name, docs) in built {
            let mut ids = BTreeSet::new();
            for (i, doc) in docs.iter().enumerate() {
                let id = manifests.add(doc).unwrap_or_else(|e| {
                    panic!(
                        "`kubectl kustomize manifests/{name}` document {}: {e}",
                        i + 1
                    )
                });
                assert!(
                    ids.insert(id.clone()),
                    "manifests/{name}: {id:?} is built twice"
                );
            }
            manifests.builds.insert(name.clone(), ids);
        }
        manifests
    }

    /// Takes in one built object; an object already taken in from another
    /// kustomization must be the same.
    fn add(&mut self, doc: &Value) -> Result<Id, String> {
        let field = |name: &str| doc.get(name).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let meta = doc.get("metadata").cloned().unwrap_or_default();
        let id = (
            api_version.to_string(),
            kind.to_string(),
            meta.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            meta.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        );
        if id.3.is_empty() {
            return Err("no metadata.name".into());
        }
        match self.objects.get(&id) {
            Some(seen) if seen == doc => return Ok(id),
            Some(_) => {
                return Err(format!("{id:?} is built differently by two kustomizations"));
            }
            None => {
                self.objects.insert(id.clone(), doc.clone());
            }
        }
        self.add_typed(api_version, kind, doc)?;
        Ok(id)
    }

    fn add_typed(&mut self, api_version: &str, kind: &str, doc: &Value) -> Result<(), String> {
        match (api_version, kind) {
            ("v1", "Namespace") => self.namespaces.push(strict(doc)?),
            ("v1", "ServiceAccount") => self.service_accounts.push(strict(doc)?),
            ("v1", "Service") => self.services.push(strict(doc)?),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(strict(doc)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                self.cluster_roles.push(strict(doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                self.cluster_role_bindings.push(strict(doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => self.roles.push(strict(doc)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                self.role_bindings.push(strict(doc)?)
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                self.service_monitors.push(strict(doc)?)
            }
            ("monitoring.coreos.com/v1", "PrometheusRule") => {
                self.prometheus_rules.push(strict(doc)?)
            }
            ("v1", "ConfigMap") => self.config_maps.push(strict(doc)?),
            _ => return Err(format!("{api_version} {kind}: no type for it in this test")),
        }
        Ok(())
    }

    fn daemon_set(&self, name: &str) -> &DaemonSet {
        self.daemon_sets
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no DaemonSet {name}"))
    }

    fn service_account(&self, namespace: &str, name: &str) -> Option<&ServiceAccount> {
        self.service_accounts.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(name)
        })
    }
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet without a pod spec")
}

fn pod_labels(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn only_container(ds: &DaemonSet) -> &Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers");
    &spec.containers[0]
}

fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

// ------------------------------------------------------------- the CLI

/// target/<profile>/crossover, built once per test run (cargo makes it a
/// no-op when up to date) so that it is never stale.
fn crossover() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "observer", "--bin", "crossover"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p observer --bin crossover failed"
        );
        let bin = dir.join("crossover");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}

/// `crossover ARGS --help`: clap reads the arguments left to right and
/// fails on an unknown subcommand, flag or invalid value before it reaches
/// the trailing `--help`, which then stops it from running.
fn help_accepts(args: &[String]) -> Result<(), String> {
    let out = Command::new(crossover())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "crossover {} --help: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The subcommands `crossover --help` lists.
fn subcommands() -> BTreeSet<String> {
    let out = Command::new(crossover()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The agent container's args and env, parsed by the real `AgentArgs`
/// (every validation clap does: values, conflicts, required flags). Each
/// env var must feed a flag (`#[arg(env)]`); downward-API values stand in
/// as the kubelet would resolve them for a pod of `ds` on node `node-a`.
fn agent_args(ds: &DaemonSet, c: &Container) -> Result<AgentArgs, String> {
    let command = AgentArgs::augment_args(clap::Command::new("agent"));
    let mut argv = c.args.clone().unwrap_or_default();
    if argv.first().map(String::as_str) != Some("agent") {
        return Err(format!(
            "args {argv:?} do not start with the agent subcommand"
        ));
    }
    for env in c.env.iter().flatten() {
        let flag = command
            .get_arguments()
            .find(|a| a.get_env() == Some(std::ffi::OsStr::new(&env.name)))
            .and_then(|a| a.get_long())
            .ok_or_else(|| format!("env {} is read by no flag of crossover agent", env.name))?;
        let value = match (&env.value, &env.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .ok_or_else(|| format!("env {}: only fieldRef is expected", env.name))?;
                match field.field_path.as_str() {
                    "spec.nodeName" => "node-a".into(),
                    "status.hostIP" => "10.0.0.1".into(),
                    "metadata.namespace" => namespace(&ds.metadata).to_string(),
                    other => return Err(format!("env {}: unexpected fieldRef {other}", env.name)),
                }
            }
            _ => return Err(format!("env {}: value or valueFrom", env.name)),
        };
        // A flag on the command line wins over its env var, as in clap.
        if !argv.iter().any(|a| a == &format!("--{flag}")) {
            argv.extend([format!("--{flag}"), value]);
        }
    }
    let matches = command
        .try_get_matches_from(&argv)
        .map_err(|e| format!("{argv:?}: {e}"))?;
    AgentArgs::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// `k=v,k2=v2` (equality terms only, as the defaults are).
fn selector_labels(selector: &str) -> BTreeMap<String, String> {
    selector
        .split(',')
        .map(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or_else(|| panic!("selector term {term:?}: only k=v is checked"));
            assert!(
                !k.ends_with('!'),
                "selector term {term:?}: only k=v is checked"
            );
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ----------------------------------------------------------------- RBAC

/// How much of the cluster a request covers.
#[derive(Clone, Copy, Debug)]
enum Scope<'a> {
    /// Every namespace (or a cluster-scoped resource).
    All,
    In(&'a str),
}

/// One watch of the agent: the watch's name in the agent, the resource,
/// where, and the name its field selector asks for.
struct Watched<'a> {
    what: &'static str,
    group: String,
    resource: String,
    scope: Scope<'a>,
    name: Option<&'static str>,
}

/// What the agent watches, mirroring observer/src/cluster/mod.rs (group
/// and plural from the very types it watches with).
fn watched(args: &AgentArgs) -> Vec<Watched<'_>> {
    fn of<'a, K: kube::Resource<DynamicType = ()>>(
        what: &'static str,
        scope: Scope<'a>,
        name: Option<&'static str>,
    ) -> Watched<'a> {
        Watched {
            what,
            group: K::group(&()).into_owned(),
            resource: K::plural(&()).into_owned(),
            scope,
            name,
        }
    }
    use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
    vec![
        of::<Node>("nodes", Scope::All, None),
        of::<Pod>("pods", Scope::All, None),
        of::<Service>("services", Scope::All, None),
        of::<CiliumNode>("ciliumnodes", Scope::All, None),
        of::<CiliumNodeConfig>("ciliumnodeconfigs", Scope::All, None),
        of::<ConfigMap>(
            "cilium-config",
            Scope::In(&args.cilium_namespace),
            Some(CILIUM_CONFIG),
        ),
        // Calico's CRDs, read as dynamic objects.
        {
            let r = observer::cluster::calico::ip_pool_resource();
            Watched {
                what: "ippools",
                group: r.group,
                resource: r.plural,
                scope: Scope::All,
                name: None,
            }
        },
        {
            let r = observer::cluster::calico::block_affinity_resource();
            Watched {
                what: "blockaffinities",
                group: r.group,
                resource: r.plural,
                scope: Scope::All,
                name: None,
            }
        },
        of::<Pod>("agent-pods", Scope::In(&args.namespace), None),
        of::<Pod>("probe-pods", Scope::All, None),
        of::<ConfigMap>(
            "migration-state",
            Scope::In(&args.namespace),
            Some(MIGRATION_STATE),
        ),
    ]
}

/// The RBAC authoriser, for one ServiceAccount.
struct Rbac<'a> {
    manifests: &'a Manifests,
    namespace: &'a str,
    name: &'a str,
}

impl<'a> Rbac<'a> {
    fn subject(&self, s: &Subject) -> bool {
        s.kind == "ServiceAccount"
            && s.name == self.name
            && s.namespace.as_deref() == Some(self.namespace)
    }

    /// The rules that apply to a request in `scope`.
    fn rules(&self, scope: Scope<'_>) -> Vec<&'a PolicyRule> {
        let m = self.manifests;
        let cluster_role = |name: &str| {
            m.cluster_roles
                .iter()
                .chain(builtin_cluster_roles())
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no ClusterRole {name}"))
        };
        let mut rules = Vec::new();
        for b in &m.cluster_role_bindings {
            if b.subjects.iter().flatten().any(|s| self.subject(s)) {
                assert_eq!(b.role_ref.kind, "ClusterRole");
                rules.extend(cluster_role(&b.role_ref.name).rules.iter().flatten());
            }
        }
        if let Scope::In(ns) = scope {
            for b in m
                .role_bindings
                .iter()
                .filter(|b| namespace(&b.metadata) == ns)
            {
                if !b.subjects.iter().flatten().any(|s| self.subject(s)) {
                    continue;
                }
                match b.role_ref.kind.as_str() {
                    "ClusterRole" => {
                        rules.extend(cluster_role(&b.role_ref.name).rules.iter().flatten())
                    }
                    "Role" => {
                        let role = m
                            .roles
                            .iter()
                            .find(|r| {
                                namespace(&r.metadata) == ns
                                    && r.metadata.name.as_deref() == Some(&b.role_ref.name)
                            })
                            .unwrap_or_else(|| panic!("no Role {ns}/{}", b.role_ref.name));
                        rules.extend(role.rules.iter().flatten());
                    }
                    other => panic!("roleRef kind {other}"),
                }
            }
        }
        rules
    }

    /// Whether `verb` on the non-resource URL `path` is allowed (RBAC: an
    /// exact URL, or a prefix ending in `*`).
    fn allows_url(&self, verb: &str, path: &str) -> bool {
        self.rules(Scope::All).iter().any(|r| {
            r.verbs.iter().any(|v| v == verb || v == "*")
                && r.non_resource_urls
                    .iter()
                    .flatten()
                    .any(|u| match u.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => u == path,
                    })
        })
    }

    /// Whether `verb` on `group/resource` in `scope` is allowed; `name` is
    /// the object's name, for list and watch the `metadata.name` field
    /// selector's value (the API server's RequestInfo since 1.11).
    fn allows(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        scope: Scope<'_>,
        name: Option<&str>,
    ) -> bool {
        let has = |list: &[String], item: &str| list.iter().any(|x| x == item || x == "*");
        self.rules(scope).iter().any(|r| {
            has(&r.verbs, verb)
                && has(r.api_groups.as_deref().unwrap_or_default(), group)
                && has(r.resources.as_deref().unwrap_or_default(), resource)
                && match r.resource_names.as_deref() {
                    None | Some([]) => true,
                    Some(names) => name.is_some_and(|n| names.iter().any(|x| x == n)),
                }
        })
    }
}

/// The cluster roles the API server bootstraps that the manifests bind:
/// `system:auth-delegator`, as Kubernetes defines it.
fn builtin_cluster_roles() -> &'static [ClusterRole] {
    static BUILTIN: OnceLock<Vec<ClusterRole>> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let create = |group: &str, resource: &str| PolicyRule {
            api_groups: Some(vec![group.into()]),
            resources: Some(vec![resource.into()]),
            verbs: vec!["create".into()],
            ..Default::default()
        };
        vec![ClusterRole {
            metadata: ObjectMeta {
                name: Some("system:auth-delegator".into()),
                ..Default::default()
            },
            rules: Some(vec![
                create("authentication.k8s.io", "tokenreviews"),
                create("authorization.k8s.io", "subjectaccessreviews"),
            ]),
            ..Default::default()
        }]
    })
}

// ------------------------------------------------------- other helpers

/// Kubernetes' toleration semantics: does `t` tolerate the taint?
fn tolerates(t: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != effect)
    {
        return false;
    }
    // A NoExecute toleration with a deadline still evicts.
    if effect == "NoExecute" && t.toleration_seconds.is_some() {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t.key.as_deref().is_none_or(|k| k.is_empty() || k == key),
        "Equal" => t.key.as_deref() == Some(key) && t.value.as_deref().unwrap_or("") == value,
        other => panic!("toleration operator {other}"),
    }
}

/// Taints a node can carry while it is migrated, drained, rebooted or
/// broken: the agent and the probe must stay through all of them.
const TAINTS: [(&str, &str, &str); 12] = [
    ("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
    ("node-role.kubernetes.io/master", "", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "", "NoSchedule"),
    ("node.kubernetes.io/not-ready", "", "NoExecute"),
    ("node.kubernetes.io/unreachable", "", "NoExecute"),
    ("node.kubernetes.io/network-unavailable", "", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "", "NoSchedule"),
    ("node.kubernetes.io/disk-pressure", "", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "", "NoSchedule"),
    (
        "node.cloudprovider.kubernetes.io/uninitialized",
        "true",
        "NoSchedule",
    ),
    ("node.cilium.io/agent-not-ready", "true", "NoExecute"),
    ("example.com/cni-migration", "in-progress", "NoExecute"),
];

/// A memory or CPU quantity in bytes or cores.
fn quantity(q: &str) -> f64 {
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (number, unit) = q.split_at(split);
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    n * match unit {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("quantity {q:?}: unit {unit:?}"),
    }
}

/// The container port a probe or Service port names (by name or number).
fn port<'c>(c: &'c Container, target: &IntOrString, protocol: &str) -> Option<&'c ContainerPort> {
    c.ports.iter().flatten().find(|p| {
        p.protocol.as_deref().unwrap_or("TCP") == protocol
            && match target {
                IntOrString::Int(n) => p.container_port == *n,
                IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
            }
    })
}

fn http_probe<'p>(probe: Option<&'p Probe>, what: &str) -> (&'p str, &'p IntOrString) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("agent: no HTTP {what}"));
    (get.path.as_deref().unwrap_or("/"), &get.port)
}

// ----------------------------------------------------------------- tests

#[test]
fn every_manifest_parses_strictly() {
    let m = Manifests::load();
    assert_eq!(m.daemon_sets.len(), 2, "agent and probe DaemonSets");
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.service_monitors.len(), 1);
    // No namespace transformer: every namespaced object names its
    // namespace, which the manifests create, or is Cilium's, or is
    // `default` (where Node Events live: the agent's events Role).
    let created: BTreeSet<&str> = m
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    assert_eq!(created, BTreeSet::from(["crossover"]));
    for (_, kind, ns, name) in m.objects.keys() {
        let cluster_scoped =
            ["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind.as_str());
        assert_eq!(
            ns.is_empty(),
            cluster_scoped,
            "{kind} {name}: namespace {ns:?}"
        );
        assert!(
            ns.is_empty()
                || created.contains(ns.as_str())
                || ns == "kube-system"
                || (ns == "default" && name == "crossover-agent-node-events"),
            "{kind} {name}: namespace {ns} is neither created here nor Cilium's"
        );
    }
}

#[test]
fn agent_daemonset_matches_the_cli_and_the_node() {
    let m = Manifests::load();
    let ds = m.daemon_set(AGENT);
    let ns = namespace(&ds.metadata);
    let spec = pod_spec(ds);
    let c = only_container(ds);
    let probe_ds = m.daemon_set(PROBE);

    // The real CLI takes the args, and the env feeds real flags.
    let args_list = c.args.clone().unwrap_or_default();
    help_accepts(&args_list).unwrap();
    let args = agent_args(ds, c).unwrap();
    assert!(c.command.is_none(), "the image's entrypoint is crossover");
    assert_eq!(
        c.image,
        probe_ds
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
    );
    // The image comes from the base kustomization's one `images:` entry,
    // tagged with this version.
    let images = kustomization(&manifests_dir().join("base")).images;
    assert_eq!(images.len(), 1, "manifests/base names the image once");
    assert_eq!(images[0].name, "crossover");
    assert_eq!(images[0].new_tag, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        c.image.as_deref(),
        Some(format!("{}:{}", images[0].new_name, images[0].new_tag).as_str())
    );

    // Peers are the pods of this DaemonSet, found in its namespace by the
    // agent selector; probes by the probe selector.
    assert_eq!(args.namespace, ns, "--namespace / POD_NAMESPACE");
    let labels = pod_labels(ds);
    assert_eq!(labels.get(NAME_LABEL).map(String::as_str), Some(AGENT));
    let agent_selector = selector_labels(&args.agent_selector);
    assert!(
        selects(&agent_selector, &labels),
        "--agent-selector misses the agent pods"
    );
    assert!(!selects(&agent_selector, &pod_labels(probe_ds)));
    let probe_selector = selector_labels(&args.probe_selector);
    assert!(
        selects(&probe_selector, &pod_labels(probe_ds)),
        "--probe-selector misses the probe pods"
    );
    assert!(!selects(&probe_selector, &labels));
    let selector = ds
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    assert!(
        selects(&selector, &labels),
        "DaemonSet selector vs its pod labels"
    );
    assert!(args.node_name.is_some(), "NODE_NAME from spec.nodeName");

    // The host's bpffs, holding --pin-path.
    let pin = args.pin_path.as_deref().expect("--pin-path");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| Path::new(&v.mount_path) == pin.parent().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "no volume mounted at --pin-path's parent {}",
                pin.parent().unwrap().display()
            )
        });
    assert_eq!(mount.mount_path, "/sys/fs/bpf");
    assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
    assert_ne!(mount.read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the bpffs volume");
    let host = volume.host_path.as_ref().expect("bpffs is a hostPath");
    assert_eq!(host.path, "/sys/fs/bpf");
    assert_eq!(host.type_.as_deref(), Some("Directory"));
    assert!(!args.detach_on_exit, "pins must outlive the pod");

    // The node's network, every node, not evicted.
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        args.netns.is_none(),
        "no network namespace is entered in production"
    );
    for (key, value, effect) in TAINTS {
        assert!(
            spec.tolerations
                .iter()
                .flatten()
                .any(|t| tolerates(t, key, value, effect)),
            "agent: taint {key}={value}:{effect} not tolerated"
        );
    }
    let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        rolling.max_surge,
        Some(IntOrString::Int(0)),
        "host port and pin lock: no surge"
    );
    let grace = spec
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!((5..=60).contains(&grace));

    // The serving port: --listen, named metrics, and the probes on it.
    let metrics =
        port(c, &IntOrString::String("metrics".into()), "TCP").expect("a port named metrics");
    assert_eq!(metrics.container_port, i32::from(args.listen.port()));
    assert_eq!(metrics.container_port, 9190);
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
        (c.startup_probe.as_ref(), "/healthz"),
    ] {
        let (p, target) = http_probe(probe, path);
        assert_eq!(p, path);
        assert_eq!(
            port(c, target, "TCP").map(|p| p.container_port),
            Some(metrics.container_port)
        );
    }
    let startup = c.startup_probe.as_ref().unwrap();
    let budget = startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3);
    assert!(
        budget >= 300,
        "startupProbe allows only {budget} s for the API sync"
    );

    // Sized from docs/restarts.md.
    let resources = c.resources.as_ref().expect("resources");
    let get =
        |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| { m.as_ref().and_then(|m| m.get(k)).map(|q| quantity(&q.0)) };
    let request = get(&resources.requests, "memory").expect("memory request");
    let limit = get(&resources.limits, "memory").expect("memory limit");
    assert!(
        request >= RSS_100K as f64,
        "memory request below the RSS at 100k flows"
    );
    assert!(
        limit >= (RSS_100K + SNAPSHOT_100K + FLOWS_MAP) as f64,
        "memory limit below RSS + snapshot + FLOWS"
    );
    assert!(get(&resources.requests, "cpu").is_some(), "cpu request");
    assert!(
        get(&resources.limits, "cpu").is_none(),
        "no CPU limit (throttled samples)"
    );

    // Root with three capabilities, not privileged.
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN"]));
    assert!(spec.host_pid.is_none() && spec.host_ipc.is_none());

    // Its identity exists and mounts a token (the agent reads the API).
    let sa_name = spec
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    let sa = m
        .service_account(ns, sa_name)
        .unwrap_or_else(|| panic!("no ServiceAccount {ns}/{sa_name}"));
    assert_ne!(sa.automount_service_account_token, Some(false));
    assert_ne!(spec.automount_service_account_token, Some(false));
}

#[test]
fn probe_daemonset_is_a_plain_pod_on_every_node() {
    let m = Manifests::load();
    let ds = m.daemon_set(PROBE);
    let ns = namespace(&ds.metadata);
    let spec = pod_spec(ds);
    let c = only_container(ds);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args, PROBE_ARGS, "probe args");
    if subcommands().contains("probe") {
        help_accepts(&args).unwrap();
    } else {
        eprintln!("note: this crossover has no probe subcommand yet: probe args compared only");
    }
    let listen: SocketAddr = args[2].parse().unwrap();

    assert_eq!(
        pod_labels(ds).get(NAME_LABEL).map(String::as_str),
        Some(PROBE)
    );
    let selector = ds
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    assert!(selects(&selector, &pod_labels(ds)));
    assert_ne!(
        spec.host_network,
        Some(true),
        "probe pods need CNI addresses"
    );
    for (key, value, effect) in TAINTS {
        assert!(
            spec.tolerations
                .iter()
                .flatten()
                .any(|t| tolerates(t, key, value, effect)),
            "probe: taint {key}={value}:{effect} not tolerated"
        );
    }

    // UDP echo and TCP accept on --listen's port; ready once TCP accepts.
    let tcp = port(c, &IntOrString::Int(listen.port().into()), "TCP").expect("TCP port");
    port(c, &IntOrString::Int(listen.port().into()), "UDP").expect("UDP port");
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.tcp_socket.as_ref())
        .expect("TCP readiness probe");
    assert_eq!(
        port(c, &ready.port, "TCP").map(|p| p.container_port),
        Some(tcp.container_port)
    );

    // Nothing: no capability, no root, no token, no permission.
    let sc = c.security_context.as_ref().expect("securityContext");
    let pod_sc = spec.security_context.as_ref();
    assert!(
        sc.run_as_non_root == Some(true) || pod_sc.and_then(|s| s.run_as_non_root) == Some(true)
    );
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(caps.add.as_ref().is_none_or(Vec::is_empty));
    let resources = c.resources.as_ref().expect("resources");
    let memory = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .expect("memory limit");
    assert!(quantity(&memory.0) <= 128.0 * 1024.0 * 1024.0, "tiny");

    let sa_name = spec
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    let sa = m
        .service_account(ns, sa_name)
        .unwrap_or_else(|| panic!("no ServiceAccount {ns}/{sa_name}"));
    assert_eq!(sa.automount_service_account_token, Some(false));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let rbac = Rbac {
        manifests: &m,
        namespace: ns,
        name: sa_name,
    };
    for scope in [Scope::All, Scope::In(ns), Scope::In("kube-system")] {
        assert!(
            rbac.rules(scope).is_empty(),
            "the probe's ServiceAccount is bound to something"
        );
    }
}

/// kube-prometheus' Prometheus, bound in manifests/monitoring to read
/// /metrics when the agents check tokens there.
const PROMETHEUS_SA: (&str, &str) = ("monitoring", "prometheus-k8s");

/// Whoever the agents must let in may: the driver reads the JSON API,
/// Prometheus /metrics; and nobody else is granted either by the
/// manifests (the agent, the probes).
#[test]
fn readers_may_read_what_the_agents_check() {
    let m = Manifests::load();
    let who = |namespace, name| Rbac {
        manifests: &m,
        namespace,
        name,
    };
    let driver = who("crossover", "crossover-migrate");
    for path in [
        "/api/v1/reading",
        "/api/v1/loss",
        "/api/v1/status",
        "/api/v1/flows",
    ] {
        assert!(
            driver.allows_url("get", path),
            "the driver may not get {path}"
        );
    }
    assert!(!driver.allows_url("get", "/metrics"));
    let prometheus = who(PROMETHEUS_SA.0, PROMETHEUS_SA.1);
    assert!(prometheus.allows_url("get", "/metrics"));
    assert!(!prometheus.allows_url("get", "/api/v1/flows"));
    for (ns, name) in [("crossover", AGENT), ("crossover", PROBE)] {
        let sa = who(ns, name);
        assert!(
            !sa.allows_url("get", "/api/v1/reading"),
            "{name} may read agents"
        );
        assert!(
            !sa.allows_url("get", "/metrics"),
            "{name} may read /metrics"
        );
    }
    // The reader role grants URLs only: nothing on the API server's
    // resources.
    let reader = m
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("crossover-reader"))
        .expect("ClusterRole crossover-reader");
    for rule in reader.rules.iter().flatten() {
        assert!(
            rule.resources.is_none() && rule.api_groups.is_none(),
            "{rule:?}"
        );
        assert_eq!(rule.verbs, ["get"]);
    }
}

#[test]
fn rbac_grants_exactly_what_the_agent_watches() {
    let m = Manifests::load();
    let ds = m.daemon_set(AGENT);
    let args = agent_args(ds, only_container(ds)).unwrap();
    let ns = namespace(&ds.metadata);
    let sa = pod_spec(ds).service_account_name.as_deref().unwrap();
    let rbac = Rbac {
        manifests: &m,
        namespace: ns,
        name: sa,
    };
    let watched = watched(&args);

    // Every watch: the first list and the watch, with its field selector.
    for w in &watched {
        for verb in ["list", "watch", "get"] {
            assert!(
                rbac.allows(verb, &w.group, &w.resource, w.scope, w.name),
                "the agent cannot {verb} {} ({}/{} in {:?})",
                w.what,
                w.group,
                w.resource,
                w.scope
            );
        }
    }
    // Its readers' tokens checked (agent/auth.rs): the two reviews.
    let reviews = [
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
    ];
    for (group, resource) in reviews {
        assert!(
            rbac.allows("create", group, resource, Scope::All, None),
            "the agent cannot create {group}/{resource}: its readers' tokens go unchecked"
        );
    }
    // Events on its own Node when a hook turns blind or sees again
    // (agent/hook_events.rs): a Node's Events are in `default`, and only
    // there; created, never patched (each is new).
    let events = ("events.k8s.io", "events");
    assert!(
        rbac.allows("create", events.0, events.1, Scope::In("default"), None),
        "the agent cannot create Events on its Node (in default)"
    );
    for (verb, scope) in [
        ("patch", Scope::In("default")),
        ("list", Scope::In("default")),
        ("create", Scope::In(ns)),
        ("create", Scope::All),
    ] {
        assert!(
            !rbac.allows(verb, events.0, events.1, scope, None),
            "the agent may {verb} Events in {scope:?}"
        );
    }
    // Nothing more: read-only but for the reviews and its Node's Events,
    // only those resources, no wildcards.
    let known: BTreeSet<(&str, &str)> = watched
        .iter()
        .map(|w| (w.group.as_str(), w.resource.as_str()))
        .chain(reviews)
        .chain([events])
        .collect();
    for scope in [
        Scope::All,
        Scope::In(ns),
        Scope::In(&args.cilium_namespace),
        Scope::In("default"),
    ] {
        for rule in rbac.rules(scope) {
            let review = rule
                .resources
                .iter()
                .flatten()
                .all(|r| r.ends_with("reviews"));
            let event = rule.resources.as_deref() == Some(&[events.1.to_owned()][..])
                && rule.api_groups.as_deref() == Some(&[events.0.to_owned()][..]);
            for verb in &rule.verbs {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str())
                        || ((review || event) && verb == "create"),
                    "verb {verb} granted on {:?}",
                    rule.resources
                );
            }
            assert!(
                rule.non_resource_urls.is_none(),
                "non-resource URLs granted"
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    assert!(
                        known.contains(&(group.as_str(), resource.as_str())),
                        "{group}/{resource} granted but not watched"
                    );
                }
            }
        }
    }
    for (verb, group, resource, scope, name) in [
        ("list", "", "configmaps", Scope::All, None),
        ("list", "", "configmaps", Scope::In("kube-system"), None),
        (
            "get",
            "",
            "configmaps",
            Scope::In("kube-system"),
            Some("kubeadm-config"),
        ),
        ("watch", "", "configmaps", Scope::In(ns), None),
        (
            "get",
            "",
            "secrets",
            Scope::In("kube-system"),
            Some(CILIUM_CONFIG),
        ),
        ("list", "", "secrets", Scope::All, None),
        ("delete", "", "pods", Scope::In(ns), None),
        ("create", "", "pods", Scope::In(ns), None),
        ("patch", "", "nodes", Scope::All, None),
        ("update", "cilium.io", "ciliumnodes", Scope::All, None),
        ("list", "cilium.io", "ciliumendpoints", Scope::All, None),
    ] {
        assert!(
            !rbac.allows(verb, group, resource, scope, name),
            "the agent may {verb} {group}/{resource} in {scope:?} ({name:?})"
        );
    }
    // Bindings name a ServiceAccount that exists.
    let subjects = m
        .cluster_role_bindings
        .iter()
        .flat_map(|b| b.subjects.iter().flatten())
        .chain(
            m.role_bindings
                .iter()
                .flat_map(|b| b.subjects.iter().flatten()),
        );
    for s in subjects {
        assert_eq!(s.kind, "ServiceAccount");
        let s_ns = s.namespace.as_deref().expect("subject namespace");
        if (s_ns, s.name.as_str()) == PROMETHEUS_SA {
            // Prometheus' own, which the manifests do not install.
            continue;
        }
        assert!(
            m.service_account(s_ns, &s.name).is_some(),
            "no ServiceAccount {s_ns}/{}",
            s.name
        );
    }
}

#[test]
fn service_and_servicemonitor_reach_the_metrics_port() {
    let m = Manifests::load();
    let ds = m.daemon_set(AGENT);
    let c = only_container(ds);
    let args = agent_args(ds, c).unwrap();
    let svc = &m.services[0];
    assert_eq!(namespace(&svc.metadata), namespace(&ds.metadata));
    let spec = svc.spec.as_ref().unwrap();
    let selector = spec.selector.clone().unwrap_or_default();
    assert!(
        selects(&selector, &pod_labels(ds)),
        "Service selector misses the agent pods"
    );
    assert!(
        !selects(&selector, &pod_labels(m.daemon_set(PROBE))),
        "Service selects probe pods"
    );
    let svc_port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a Service port named metrics");
    let target = svc_port
        .target_port
        .clone()
        .unwrap_or(IntOrString::Int(svc_port.port));
    let container_port = port(c, &target, svc_port.protocol.as_deref().unwrap_or("TCP"))
        .expect("the Service's targetPort is no agent port");
    assert_eq!(container_port.container_port, i32::from(args.listen.port()));

    let sm = &m.service_monitors[0];
    assert_eq!(
        (sm.api_version.as_str(), sm.kind.as_str()),
        ("monitoring.coreos.com/v1", "ServiceMonitor")
    );
    assert!(
        sm.spec.selector.match_expressions.is_none(),
        "matchLabels only, checked here"
    );
    let wanted = sm.spec.selector.match_labels.clone().unwrap_or_default();
    assert!(
        selects(&wanted, &svc.metadata.labels.clone().unwrap_or_default()),
        "ServiceMonitor selector misses the Service's labels"
    );
    let svc_ns = namespace(&svc.metadata);
    let in_namespace = match &sm.spec.namespace_selector {
        None => namespace(&sm.metadata) == svc_ns,
        Some(s) => s.any == Some(true) || s.match_names.iter().any(|n| n == svc_ns),
    };
    assert!(in_namespace, "ServiceMonitor looks in another namespace");
    assert!(!sm.spec.endpoints.is_empty());
    for e in &sm.spec.endpoints {
        assert_eq!(
            e.port.as_deref(),
            svc_port.name.as_deref(),
            "endpoint port name"
        );
        assert_eq!(e.path.as_deref().unwrap_or("/metrics"), "/metrics");
    }
}

#[test]
fn prometheusrule_sits_with_the_servicemonitor_and_every_rule_is_one_thing() {
    let m = Manifests::load();
    let [rule] = &m.prometheus_rules[..] else {
        panic!("one PrometheusRule");
    };
    assert_eq!(
        namespace(&rule.metadata),
        namespace(&m.service_monitors[0].metadata)
    );
    let rules: Vec<&Rule> = rule.spec.groups.iter().flat_map(|g| &g.rules).collect();
    assert!(!rules.is_empty());
    for r in rules {
        match (&r.record, &r.alert) {
            (Some(record), None) => {
                assert!(record.starts_with("crossover:"), "{record}");
                assert!(r.for_.is_none() && r.annotations.is_empty(), "{r:?}");
            }
            (None, Some(alert)) => {
                assert!(alert.starts_with("Crossover"), "{alert}");
                assert!(r.labels.contains_key("severity"), "{alert}: no severity");
                assert!(r.annotations.contains_key("summary"), "{alert}: no summary");
            }
            _ => panic!("a rule records or alerts: {r:?}"),
        }
    }
    // The dashboard, as kustomize generated it for Grafana's sidecar.
    let [dashboard] = &m.config_maps[..] else {
        panic!("one ConfigMap: the dashboard");
    };
    let labels = dashboard.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let json = &dashboard.data.as_ref().expect("data")["crossover.json"];
    let parsed: serde_json::Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
}

/// Each entry point builds with the real kustomize and adds only its own
/// part to the base: `manifests/` is the base, `monitoring/` adds the
/// Prometheus Operator's objects and the Grafana dashboard's ConfigMap,
/// `migrate/` the driver's ServiceAccount and RBAC.
#[test]
fn every_kustomization_builds_and_overlays_only_add() {
    let m = Manifests::load();
    let dirs: BTreeSet<&str> = m.builds.keys().map(String::as_str).collect();
    assert_eq!(dirs, BTreeSet::from(["", "base", "migrate", "monitoring"]));
    let base = &m.builds["base"];
    assert_eq!(&m.builds[""], base, "manifests/ is the base");
    for overlay in ["migrate", "monitoring"] {
        assert!(
            m.builds[overlay].is_superset(base),
            "manifests/{overlay} leaves out part of the base"
        );
    }
    // The agent and probe DaemonSets, their ServiceAccounts, the
    // namespace, the Service; the agent's ClusterRole and binding, its
    // cilium-config, migration-state and node-events Roles and bindings,
    // its auth-delegator binding, and the readers' ClusterRole.
    assert_eq!(base.len(), 16, "{base:?}");
    let monitoring: Vec<_> = m.builds["monitoring"].difference(base).collect();
    // ServiceMonitor, PrometheusRule, the dashboard, Prometheus' /metrics
    // ClusterRole and binding.
    assert_eq!(monitoring.len(), 5, "{monitoring:?}");
    for id in monitoring {
        let dashboard = (id.0.as_str(), id.1.as_str(), id.3.as_str())
            == ("v1", "ConfigMap", "crossover-dashboard");
        let metrics_reader = id.0 == "rbac.authorization.k8s.io/v1"
            && ["ClusterRole", "ClusterRoleBinding"].contains(&id.1.as_str())
            && id.3 == "crossover-metrics-reader";
        assert!(
            dashboard || metrics_reader || id.0.split('/').next() == Some("monitoring.coreos.com"),
            "manifests/monitoring adds {id:?}"
        );
    }
    let migrate: Vec<_> = m.builds["migrate"].difference(base).collect();
    // ServiceAccount, ClusterRole and binding, Role and binding, and the
    // binding to crossover-reader.
    assert_eq!(migrate.len(), 6, "{migrate:?}");
    for id in migrate {
        assert!(
            ["crossover-migrate", "crossover-migrate-reader"].contains(&id.3.as_str()),
            "manifests/migrate adds {id:?}"
        );
    }
    // kustomize's own refusal surfaces as a failure naming it: an overlay
    // inside its base (the layout this replaced) is a cycle.
    let dir = std::env::temp_dir().join(format!("crossover-kustomize-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("overlay")).unwrap();
    let k = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n";
    std::fs::write(dir.join("kustomization.yaml"), format!("{k}  - cm.yaml\n")).unwrap();
    std::fs::write(
        dir.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("overlay/kustomization.yaml"),
        format!("{k}  - ..\n"),
    )
    .unwrap();
    let built = std::panic::catch_unwind(|| kustomize_build(&dir.join("overlay")));
    let err = built.expect_err("an overlay inside its base builds");
    let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(message.contains("cycle detected"), "{message}");
}

// The checks themselves can fail: a typo, an unknown flag, a selector miss.

#[test]
fn a_misspelt_field_fails() {
    let path = manifests_dir().join("base/agent-daemonset.yaml");
    let mut doc = documents(&path).remove(0);
    strict::<DaemonSet>(&doc).unwrap();
    let spec = doc["spec"]["template"]["spec"].as_object_mut().unwrap();
    let host = spec.remove("hostNetwork").unwrap();
    spec.insert("hostNetwrok".into(), host);
    let err = strict::<DaemonSet>(&doc).unwrap_err();
    assert!(
        err.contains(".spec.template.spec.hostNetwrok: no such field"),
        "{err}"
    );
    // Misplaced: a container field one level up.
    let mut doc = documents(&path).remove(0);
    doc["spec"]["template"]["spec"]["readOnlyRootFilesystem"] = Value::Bool(true);
    assert!(strict::<DaemonSet>(&doc).is_err());
    // A wrong type fails on the way in.
    let mut doc = documents(&path).remove(0);
    doc["spec"]["template"]["spec"]["hostNetwork"] = Value::String("maybe".into());
    assert!(strict::<DaemonSet>(&doc).is_err());
}

#[test]
fn an_unknown_flag_or_bad_value_fails() {
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    help_accepts(&strings(&["agent", "--pin-path", "/sys/fs/bpf/crossover"])).unwrap();
    assert!(help_accepts(&strings(&["agent", "--pin-pth", "/sys/fs/bpf/crossover"])).is_err());
    assert!(help_accepts(&strings(&["agent", "--window", "soon"])).is_err());
    assert!(help_accepts(&strings(&["agnet"])).is_err());

    let m = Manifests::load();
    let ds = m.daemon_set(AGENT);
    let mut c = only_container(ds).clone();
    agent_args(ds, &c).unwrap();
    c.args.as_mut().unwrap().push("--detach-on-exit=yes".into());
    assert!(agent_args(ds, &c).is_err());
    let mut c = only_container(ds).clone();
    c.env.as_mut().unwrap()[0].name = "NODENAME".into();
    let err = agent_args(ds, &c).expect_err("an env var no flag reads");
    assert!(err.contains("NODENAME"), "{err}");
    // Values are parsed by the agent's own parsers.
    let mut c = only_container(ds).clone();
    c.args
        .as_mut()
        .unwrap()
        .extend(strings(&["--listen", "everywhere:9190"]));
    let err = agent_args(ds, &c).expect_err("a --listen that is no address");
    assert!(err.contains("node:PORT"), "{err}");
}

#[test]
fn rbac_and_tolerations_checks_can_fail() {
    let m = Manifests::load();
    let rbac = Rbac {
        manifests: &m,
        namespace: "crossover",
        name: AGENT,
    };
    assert!(rbac.allows(
        "watch",
        "",
        "configmaps",
        Scope::In("kube-system"),
        Some(CILIUM_CONFIG)
    ));
    // Without the field selector, the name is unknown: refused.
    assert!(!rbac.allows("watch", "", "configmaps", Scope::In("kube-system"), None));
    let nobody = Rbac {
        manifests: &m,
        namespace: "crossover",
        name: "someone-else",
    };
    assert!(!nobody.allows("list", "", "nodes", Scope::All, None));
    let only_control_plane = Toleration {
        key: Some("node-role.kubernetes.io/control-plane".into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    };
    assert!(tolerates(
        &only_control_plane,
        "node-role.kubernetes.io/control-plane",
        "",
        "NoSchedule"
    ));
    assert!(!tolerates(
        &only_control_plane,
        "node.kubernetes.io/not-ready",
        "",
        "NoExecute"
    ));
    let deadline = Toleration {
        operator: Some("Exists".into()),
        toleration_seconds: Some(300),
        ..Toleration::default()
    };
    assert!(!tolerates(
        &deadline,
        "node.kubernetes.io/unreachable",
        "",
        "NoExecute"
    ));
}
