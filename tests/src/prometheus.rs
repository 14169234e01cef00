//! Prometheus for the tests: the shipped rules as a plain rules file, a
//! real server (Debian's `prometheus`) run inside a network namespace, its
//! HTTP API, and promtool.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{
    agents::PORT,
    lab::{Lab, exec::run},
    netns::in_netns,
};

/// Prometheus' address on a lab's underlay bridge: it reaches every
/// node's `eth0` directly, and to the agents it is no node, so its scrapes
/// are no node pair's traffic.
pub const PROMETHEUS_ADDR: &str = "172.18.255.254";
pub const PROMETHEUS_PORT: u16 = 9090;

pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The shipped PrometheusRule.
pub fn prometheus_rule() -> Value {
    let path = manifests_dir().join("monitoring/prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the PrometheusRule");
    serde_saphyr::from_str(&text).expect("the PrometheusRule is YAML")
}

/// Writes the PrometheusRule's `spec` (a Prometheus rules file: the same
/// schema) to `dir/crossover.rules.yml`, as JSON, which is YAML.
pub fn write_rules_file(dir: &Path) -> PathBuf {
    let path = dir.join("crossover.rules.yml");
    let spec = &prometheus_rule()["spec"];
    std::fs::write(&path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    path
}

/// The shipped rules rendered at a record window of `window` instead of
/// `1m`, as docs/metrics.md tells an SRE whose Prometheus scrapes faster:
/// every `[1m]`, `offset 1m` and record name's `1m` of the loss group
/// (and the alerts' references to those records) replaced. Written like
/// [`write_rules_file`].
pub fn write_rules_file_at(dir: &Path, window: &str) -> PathBuf {
    let mut spec = prometheus_rule()["spec"].clone();
    let groups = spec["groups"].as_array_mut().expect("spec.groups");
    for group in groups.iter_mut() {
        let loss = group["name"] == "crossover.loss";
        for rule in group["rules"].as_array_mut().expect("rules") {
            for field in ["record", "expr"] {
                let Some(text) = rule[field].as_str() else {
                    continue;
                };
                let mut text = text.replace(":increase1m", &format!(":increase{window}"));
                text = text.replace(":1m", &format!(":{window}"));
                if loss {
                    text = text.replace("[1m]", &format!("[{window}]"));
                    text = text.replace("offset 1m", &format!("offset {window}"));
                    assert!(!text.contains("1m"), "a 1m left in {text}");
                }
                rule[field] = Value::String(text);
            }
        }
    }
    let path = dir.join("crossover.rules.yml");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path
}

/// The target labels the shipped ServiceMonitor gives a node's agent: its
/// relabelings from the pod's node name (the rest is the Operator's).
pub fn servicemonitor_target_labels(node: &str) -> BTreeMap<String, String> {
    let path = manifests_dir().join("monitoring/servicemonitor.yaml");
    let sm: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut labels = BTreeMap::new();
    for endpoint in sm["spec"]["endpoints"].as_array().unwrap() {
        for r in endpoint["relabelings"].as_array().into_iter().flatten() {
            assert_eq!(
                r["sourceLabels"],
                serde_json::json!(["__meta_kubernetes_pod_node_name"]),
                "a relabeling this test does not emulate: {r}"
            );
            let target = r["targetLabel"].as_str().unwrap();
            labels.insert(target.to_owned(), node.to_owned());
        }
    }
    labels
}

/// Scrapes every agent of `lab` each second (labelled as the
/// ServiceMonitor labels it, job `crossover-agent`), evaluates the rules
/// each second.
pub fn lab_config(lab: &Lab) -> String {
    let targets: Vec<Value> = lab
        .nodes()
        .enumerate()
        .map(|(j, node)| {
            serde_json::json!({
                "targets": [format!("{}:{PORT}", lab.state().underlay_addr(j))],
                "labels": servicemonitor_target_labels(&node.name),
            })
        })
        .collect();
    // JSON is YAML.
    serde_json::json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["crossover.rules.yml"],
        "scrape_configs": [{"job_name": "crossover-agent", "static_configs": targets}],
    })
    .to_string()
}

/// Every recording rule's `record` name.
pub fn recorded_names() -> Vec<String> {
    let rule = prometheus_rule();
    let groups = rule["spec"]["groups"].as_array().expect("spec.groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

/// `promtool ARGS` in `dir`; its output, or an error with it.
pub fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running promtool (cargo xtask setup installs Debian's prometheus)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "promtool {args:?}:\n{text}");
    Ok(text)
}

/// A Prometheus server on loopback inside network namespace `ns`, with
/// its own data directory; killed on drop.
pub struct Server {
    child: Child,
    ns: String,
    url: String,
    pub dir: PathBuf,
}

impl Server {
    /// Prometheus in `lab`'s underlay namespace at [`PROMETHEUS_ADDR`],
    /// listening on its loopback, scraping every agent with the rules
    /// already written into `dir`.
    pub fn on_lab(lab: &Lab, dir: &Path) -> Result<Server> {
        let cidr = format!("{PROMETHEUS_ADDR}/16");
        run(&[
            "ip",
            "-n",
            &lab.underlay_ns(),
            "addr",
            "add",
            &cidr,
            "dev",
            "underlay",
        ])?;
        Server::start(&lab.underlay_ns(), dir, &lab_config(lab), PROMETHEUS_PORT)
    }

    /// Its base URL, from inside its namespace.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts `prometheus` with `config` (YAML text) written into `dir`,
    /// where rule files it names are looked up too; waits until ready.
    pub fn start(ns: &str, dir: &Path, config: &str, port: u16) -> Result<Server> {
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (cargo xtask setup installs Debian's prometheus)")?;
        let server = Server {
            child,
            ns: ns.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.get("/-/ready").is_ok_and(|(s, _)| s == 200) {
            ensure!(
                Instant::now() < deadline,
                "prometheus never became ready: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(server)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let url = format!("{}{path_and_query}", self.url);
        in_netns(&self.ns, move || -> Result<(u16, String)> {
            let agent = ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(10)))
                    .http_status_as_error(false)
                    .build(),
            );
            let mut response = agent.get(&url).call()?;
            Ok((
                response.status().as_u16(),
                response.body_mut().read_to_string()?,
            ))
        })
    }

    /// `/api/v1/...` with `params`; the `data` of a success, else the
    /// server's error.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let (status, body) = self.get(&format!("/api/v1/{path}?{query}"))?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("{path}: HTTP {status}, not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!("{path} {params:?}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant query at Unix time `at`: every sample as (labels, value).
    pub fn query(&self, expr: &str, at: f64) -> Result<Vec<(Value, f64)>> {
        let data = self.api("query", &[("query", expr), ("time", &format!("{at:.3}"))])?;
        let result = data["result"].as_array().context("no result")?;
        result
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().context("no value")?;
                Ok((s["metric"].clone(), value.parse()?))
            })
            .collect()
    }

    /// Every name of a series Prometheus holds.
    pub fn metric_names(&self) -> Result<Vec<String>> {
        strings(self.api("label/__name__/values", &[])?)
    }

    /// Every label name of the series Prometheus holds.
    pub fn label_names(&self) -> Result<Vec<String>> {
        strings(self.api("labels", &[])?)
    }
}

fn strings(v: Value) -> Result<Vec<String>> {
    v.as_array()
        .context("not a list")?
        .iter()
        .map(|s| s.as_str().map(str::to_owned).context("not a string"))
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the dashboard's template variables stand for when its queries are
/// checked: one value each, as Grafana would put in.
const DASHBOARD_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "1m"),
    ("$overlay", "cilium"),
    ("$signal", "delivery"),
];

/// The shipped Grafana dashboard.
pub fn dashboard() -> Value {
    let path = manifests_dir().join("monitoring/grafana/crossover.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the dashboard is JSON")
}

/// Every PromQL query of the dashboard's panels (rows' included), as
/// (panel title, query with its variables filled in).
pub fn dashboard_queries() -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            panels(&panel["panels"], out);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let mut expr = target["expr"]
                    .as_str()
                    .expect("a target without expr")
                    .to_owned();
                for (variable, value) in DASHBOARD_VARIABLES {
                    expr = expr.replace(variable, value);
                }
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                out.push((title, expr));
            }
        }
    }
    let mut out = Vec::new();
    panels(&dashboard()["panels"], &mut out);
    out
}

/// The metrics the dashboard's variables list values of
/// (`label_values(METRIC, LABEL)`).
pub fn dashboard_variable_metrics() -> Vec<String> {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    variables
        .iter()
        .filter_map(|v| v["definition"].as_str())
        .map(|d| {
            let inner = d
                .strip_prefix("label_values(")
                .and_then(|d| d.split(',').next())
                .unwrap_or_else(|| panic!("a variable query this test does not read: {d}"));
            inner.trim().to_owned()
        })
        .collect()
}

/// Every metric name `expr` selects, parsed with promql-parser.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>> {
    use promql_parser::{
        parser::Expr,
        util::{ExprVisitor, walk_expr},
    };
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            let selector = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(vs) = selector {
                let name = vs.name.clone().or_else(|| {
                    vs.matchers
                        .matchers
                        .iter()
                        .find(|m| m.name == "__name__")
                        .map(|m| m.value.clone())
                });
                self.0.insert(name.unwrap_or_default());
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr).map_err(|e| anyhow::anyhow!("{expr}: {e}"))?;
    let mut names = Names(BTreeSet::new());
    let Ok(_) = walk_expr(&mut names, &parsed);
    Ok(names.0)
}

/// A family of docs/metrics.md's tables: its type and labels.
pub struct Documented {
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The families of docs/metrics.md's tables, by name.
pub fn documented() -> BTreeMap<String, Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut families = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `name` | type | `label`, `label` | what |
        let Some(name) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if !(name.starts_with("crossover_") || name.starts_with("process_")) {
            continue;
        }
        let labels = cells
            .get(3)
            .unwrap_or(&"")
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty() && l != "none")
            .collect();
        let kind = cells.get(2).unwrap_or(&"").to_string();
        families.insert(name.to_owned(), Documented { kind, labels });
    }
    families
}

/// Every family in `exposition` is documented, and its samples carry
/// only documented labels.
pub fn check_documented(exposition: &str) {
    let docs = documented();
    let mut kinds = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let doc = docs
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in docs/metrics.md"));
            assert_eq!(doc.kind, kind, "{name}'s type in docs/metrics.md");
            kinds.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    series
                        .strip_suffix(s)
                        .filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(series);
            let labels = line
                .split_once('{')
                .map(|(_, rest)| rest.rsplit_once('}').unwrap().0)
                .unwrap_or_default();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let name = pair.split('=').next().unwrap();
                assert!(
                    docs[family].labels.contains(name) || name == "le",
                    "{family}: label {name} is not in docs/metrics.md"
                );
            }
        }
    }
    assert!(kinds.len() >= 20, "{kinds:?}");
}
