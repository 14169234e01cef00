//! A reading of the cluster from Prometheus instead of the agents. The
//! shipped recording rules (manifests/monitoring/prometheusrule.yaml,
//! docs/metrics.md) already join every node's sends with its peer's
//! receives, over a record window (`1m` as shipped); this sums their
//! records over the reading's window into the same totals and rows a
//! reading of the agents gives, so `crossover loss --prometheus` prints
//! them alike and the migration gate (`--source prometheus=URL`) judges
//! them alike. Every query is bounded: totals by signals x overlays x
//! network pairs, rows by the focus nodes' pairs and `top`, whatever the
//! cluster's size.
//!
//! The records are found through Prometheus' rules API: their window is
//! the suffix of their name (`:increase1m`, or `:increase10s` for rules
//! rendered for a faster scrape), and a reading ends at the group's last
//! evaluation, so every reading of the same evaluation is the same window.
//! Rules missing, failing or not evaluated, an answer that is not
//! Prometheus', no agent scraped, no record at all: each is an error or a
//! missing part of the reading, never an empty, lossless one.
//!
//! The figures are Prometheus' (`increase()` over scrapes that are not
//! simultaneous: docs/metrics.md, "What the rules cannot see"), over whole
//! record windows: the window asked is rounded up to them (at most
//! [`MAX_TERMS`]).
//!
//! Rows of signal mtu carry their path's MTU as the agents' rows do
//! ([`PathMtu`]: the size probed, the size that fits, ICMP fragmentation
//! needed), from the records [`PATH_MTU`] and [`FRAG_NEEDED`] at the
//! reading's end, so a reading from Prometheus names an MTU black hole as
//! a reading of the agents does.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use observer_ebpf::{Direction, Net, Overlay};
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    CLUSTER, LossRow, Signal,
    blind::{BlindCount, BlindHooks, NodeBlind},
    client::Client,
    cluster::{ClusterReading, FailedAgent, ReadOptions},
    dropped::DropRow,
    mtu::PathMtu,
    ring::unix_ms,
};
use crate::{Error, Result};

/// The records summed, but for their window: per node pair, overlay,
/// network pair and signal, what was sent and lost in the window before
/// each evaluation.
pub const SENT: &str = "crossover:signal_sent:increase";
pub const LOST: &str = "crossover:signal_lost:increase";
/// What the large probes know of their path, per row of signal mtu (the
/// agents' `crossover_path_mtu_bytes`, by `kind`), and the ICMP
/// fragmentation needed that answered them: their values at the reading's
/// end, as the agents' rows carry them.
pub const PATH_MTU: &str = "crossover:path_mtu_bytes";
pub const FRAG_NEEDED: &str = "crossover:probe_icmp_frag_needed";
/// ICMP fragmentation needed about the nodes' own traffic, per pair and
/// overlay in the mtu rows' labels: the messages in each record window
/// (summed as the loss records are), and the size the latest of each
/// path that told in it says fits. Joined into the mtu rows as the
/// agents join theirs ([`super::mtu::join`]).
pub const ICMP_FRAG_NEEDED: &str = "crossover:icmp_frag_needed:increase";
pub const ICMP_FITS: &str = "crossover:icmp_mtu_fits_bytes";
/// The scrape job the shipped ServiceMonitor makes (the alerts' too).
pub const JOB: &str = "crossover-agent";
/// The labels of a row.
const ROW: &str = "node, peer_node, overlay, src_net, dst_net, signal";
/// The most record windows a reading sums: one term each.
pub const MAX_TERMS: u64 = 60;

#[derive(Deserialize)]
struct Answer<T> {
    status: String,
    #[serde(default)]
    error: String,
    #[serde(default = "Option::default")]
    data: Option<T>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    /// (time, value as a string), as Prometheus writes an instant vector.
    value: (f64, String),
}

#[derive(Deserialize)]
struct Rules {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
struct Group {
    name: String,
    /// Seconds.
    #[serde(default)]
    interval: f64,
    #[serde(default, rename = "lastEvaluation")]
    last_evaluation: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    name: String,
    #[serde(default)]
    health: String,
    #[serde(default, rename = "lastError")]
    last_error: String,
}

/// What the rules API says of the records a reading sums.
#[derive(Clone, Debug, PartialEq)]
pub struct Records {
    /// Their names (`crossover:signal_sent:increase1m`, ...).
    pub sent: String,
    pub lost: String,
    pub icmp_frag_needed: String,
    /// The range each record's `increase()` covers.
    pub window: Duration,
    /// How often their group is evaluated.
    pub interval: Duration,
    /// When the group last finished an evaluation (Unix ms): the end of
    /// every reading until the next.
    pub evaluated_ms: u64,
}

impl Records {
    /// The window a reading asked for `requested` covers: whole record
    /// windows, at least one.
    pub fn reading_window(&self, requested: Duration) -> Duration {
        self.window * self.terms(requested) as u32
    }

    fn terms(&self, requested: Duration) -> u64 {
        let w = self.window.as_millis().max(1);
        (requested.as_millis().div_ceil(w) as u64).max(1)
    }
}

/// An error of the server at `url`, whatever the client called it.
fn at(url: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Agent { reason, .. } => Error::Prometheus {
            url: url.to_owned(),
            reason,
        },
        e => e,
    }
}

/// GET `path` of the API: its data, or Prometheus' own error.
async fn api<T: DeserializeOwned>(client: &Client, url: &str, path: &str, what: &str) -> Result<T> {
    let answer: Answer<T> = client.get_json(url, path, what).await.map_err(at(url))?;
    let fail = |reason: String| Error::Prometheus {
        url: url.to_owned(),
        reason,
    };
    if answer.status != "success" {
        return Err(fail(format!("{path}: {}", answer.error)));
    }
    answer.data.ok_or_else(|| {
        fail(format!(
            "{path}: a success without data: is this Prometheus?"
        ))
    })
}

/// One instant query at `at_ms` (Unix ms): its samples.
async fn query(client: &Client, url: &str, expr: &str, at_ms: u64) -> Result<Vec<Sample>> {
    let path = format!(
        "/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &format!("{}.{:03}", at_ms / 1000, at_ms % 1000))
            .finish()
    );
    let data: Data = api(client, url, &path, "Prometheus query answer").await?;
    Ok(data.result)
}

/// The records the rules of the server at `url` make, checked: loaded,
/// healthy, evaluated lately (by `now`).
pub async fn records(client: &Client, url: &str, now: SystemTime) -> Result<Records> {
    let rules: Rules = api(
        client,
        url,
        "/api/v1/rules?type=record",
        "Prometheus rules answer",
    )
    .await?;
    let fail = |reason: String| Error::Prometheus {
        url: url.to_owned(),
        reason,
    };
    // The finest window loaded, should there be several.
    let mut found: Option<(&Group, Duration, String)> = None;
    for group in &rules.groups {
        for rule in &group.rules {
            let Some(suffix) = rule.name.strip_prefix(SENT) else {
                continue;
            };
            let window = humantime::parse_duration(suffix)
                .map_err(|e| fail(format!("record {}: its window {suffix:?}: {e}", rule.name)))?;
            if found.as_ref().is_none_or(|(_, w, _)| window < *w) {
                found = Some((group, window, suffix.to_owned()));
            }
        }
    }
    let Some((group, window, suffix)) = found else {
        return Err(fail(format!(
            "no recording rule {SENT}<window>: load crossover's rules \
             (manifests/monitoring/prometheusrule.yaml; docs/metrics.md says how without the \
             Prometheus Operator)"
        )));
    };
    let (sent, lost) = (format!("{SENT}{suffix}"), format!("{LOST}{suffix}"));
    let icmp_frag_needed = format!("{ICMP_FRAG_NEEDED}{suffix}");
    let summed = [
        lost.as_str(),
        PATH_MTU,
        FRAG_NEEDED,
        icmp_frag_needed.as_str(),
        ICMP_FITS,
    ];
    if let Some(missing) = summed
        .iter()
        .find(|name| !group.rules.iter().any(|r| r.name == **name))
    {
        return Err(fail(format!(
            "group {} records {sent} but not {missing}: load the whole of crossover's rules",
            group.name
        )));
    }
    for rule in group
        .rules
        .iter()
        .filter(|r| r.name == sent || summed.contains(&r.name.as_str()))
    {
        if rule.health != "ok" {
            return Err(fail(format!(
                "rule {} of group {} is {:?}{}",
                rule.name,
                group.name,
                rule.health,
                if rule.last_error.is_empty() {
                    " (not evaluated yet?)".to_owned()
                } else {
                    format!(": {}", rule.last_error)
                }
            )));
        }
    }
    let evaluated_ms = group
        .last_evaluation
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            fail(format!(
                "group {} was never evaluated (lastEvaluation {:?})",
                group.name, group.last_evaluation
            ))
        })?;
    let interval = Duration::try_from_secs_f64(group.interval).unwrap_or_default();
    // A group that stopped being evaluated serves its last records for
    // minutes: old figures are no reading of now.
    let age = unix_ms(now).saturating_sub(evaluated_ms);
    let stale = (interval * 3).max(Duration::from_secs(60));
    if Duration::from_millis(age) > stale {
        return Err(fail(format!(
            "group {} was last evaluated {}s ago (every {}s): its records are not current",
            group.name,
            age / 1000,
            interval.as_secs_f64()
        )));
    }
    Ok(Records {
        sent,
        lost,
        icmp_frag_needed,
        window,
        interval,
        evaluated_ms,
    })
}

/// A Prometheus duration of whole milliseconds.
fn promql_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `record` summed over `terms` record windows before the query's
/// instant: the records of now, a window ago, ... (a subquery's steps
/// would fall on multiples of the step instead, up to a window stale).
/// Each term's series gets its own `term` label so that `or` keeps them
/// all for the sum.
fn over(record: &str, selector: &str, terms: u64, window: Duration) -> String {
    if terms <= 1 {
        return format!("{record}{selector}");
    }
    let terms: Vec<String> = (0..terms)
        .map(|k| {
            let offset = if k == 0 {
                String::new()
            } else {
                format!(" offset {}", promql_duration(window * k as u32))
            };
            format!("label_replace({record}{selector}{offset}, \"term\", \"{k}\", \"\", \"\")")
        })
        .collect();
    format!("sum by ({ROW}) ({})", terms.join(" or "))
}

/// A regex matching exactly `names` (node names: DNS labels and dots).
fn any_of(names: &[String]) -> String {
    let escaped: Vec<String> = names.iter().map(|n| n.replace('.', "\\\\.")).collect();
    escaped.join("|")
}

/// The sent and lost of every row a query pair found, by row labels.
type Figures = BTreeMap<Vec<(String, String)>, (f64, f64)>;

async fn sent_and_lost(
    client: &Client,
    url: &str,
    at_ms: u64,
    [sent, lost]: [String; 2],
    requests: &mut usize,
) -> Result<Figures> {
    let mut figures = Figures::new();
    for (i, expr) in [sent, lost].iter().enumerate() {
        *requests += 1;
        for s in query(client, url, expr, at_ms).await? {
            let value: f64 = s.value.1.parse().unwrap_or(f64::NAN);
            let key = s
                .metric
                .into_iter()
                .filter(|(k, _)| k != "__name__")
                .collect();
            let entry = figures.entry(key).or_insert((0.0, 0.0));
            if i == 0 {
                entry.0 = value;
            } else {
                entry.1 = value;
            }
        }
    }
    Ok(figures)
}

/// The `kind` the ICMP count takes beside [`PATH_MTU`]'s in one query.
const FRAG_KIND: &str = "icmp_frag_needed";

/// A path MTU's row: node, peer node (both [`CLUSTER`] in a total),
/// overlay, network answering (the large probes leave from the host).
type PathKey = (String, String, Overlay, Net);

/// The path MTUs of [`PATH_MTU`] and [`FRAG_NEEDED`]'s samples, by row.
fn path_mtus(samples: &[Sample]) -> BTreeMap<PathKey, PathMtu> {
    let mut paths: BTreeMap<PathKey, PathMtu> = BTreeMap::new();
    for s in samples {
        let get = |name: &str| s.metric.get(name).map(String::as_str);
        let (Some(overlay), Some(dst_net), Some(kind), Ok(value)) = (
            get("overlay").and_then(Overlay::from_label),
            get("dst_net").and_then(Net::from_label),
            get("kind"),
            s.value.1.parse::<f64>(),
        ) else {
            continue;
        };
        let end = |name| get(name).unwrap_or(CLUSTER).to_owned();
        let path = paths
            .entry((end("node"), end("peer_node"), overlay, dst_net))
            .or_default();
        let size = value.clamp(0.0, f64::from(u32::MAX)) as u32;
        match kind {
            "probed" => path.probed = size,
            "fits" => path.fits = Some(size),
            "icmp_next_hop" => path.icmp_next_hop = Some(size),
            FRAG_KIND => path.icmp_frag_needed = value.max(0.0).round() as u64,
            _ => {}
        }
    }
    paths
}

/// Joins what ICMP told of the nodes' traffic ([`ICMP_FRAG_NEEDED`]) into
/// `reading`'s rows per node ([`super::mtu::join`], as the agents' rows)
/// and into its totals: the mtu total of the overlay takes the messages
/// and the smaller size, or is made of them.
fn join_told(reading: &mut ClusterReading, told: BTreeMap<PathKey, PathMtu>, seconds: f64) {
    let mut by_node: BTreeMap<String, BTreeMap<(String, Overlay), PathMtu>> = BTreeMap::new();
    let mut by_overlay: BTreeMap<Overlay, PathMtu> = BTreeMap::new();
    for ((node, peer, overlay, _), m) in told {
        if m.icmp_frag_needed == 0 {
            continue;
        }
        let sum = by_overlay.entry(overlay).or_default();
        *sum = PathMtu::merge(Some(*sum), Some(m)).unwrap_or(m);
        by_node.entry(node).or_default().insert((peer, overlay), m);
    }
    for (node, paths) in by_node {
        super::mtu::join(&mut reading.rows, &node, paths, seconds);
    }
    let totals = by_overlay
        .into_iter()
        .map(|(overlay, m)| ((CLUSTER.to_owned(), overlay), m))
        .collect();
    super::mtu::join(&mut reading.totals, CLUSTER, totals, seconds);
}

/// A row from a sample's labels; `None` when one is not crossover's.
fn row(labels: &[(String, String)], (sent, lost): (f64, f64), seconds: f64) -> Option<LossRow> {
    let get = |name: &str| {
        labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or(CLUSTER, |(_, v)| v.as_str())
    };
    // increase() extrapolates: figures are whole packets, and a receiver
    // counted a hair ahead of its sender is no negative loss.
    let sent = sent.max(0.0).round() as u64;
    let lost = (lost.max(0.0).round() as u64).min(sent);
    Some(LossRow {
        node: get("node").to_owned(),
        peer_node: get("peer_node").to_owned(),
        overlay: Overlay::from_label(get("overlay"))?,
        src_net: Net::from_label(get("src_net"))?,
        dst_net: Net::from_label(get("dst_net"))?,
        signal: Signal::from_label(get("signal"))?,
        sent,
        lost,
        refused: 0,
        seconds,
        // The rows of signal mtu get theirs from [`PATH_MTU`].
        mtu: None,
    })
}

/// A drop row from a sample of `crossover_drops_total`'s increase; `None`
/// for nothing dropped, or a label crossover does not know.
fn drop_row(s: &Sample) -> Option<DropRow> {
    let get = |name: &str| s.metric.get(name).map(String::as_str);
    let packets = s.value.1.parse::<f64>().ok()?.max(0.0).round() as u64;
    (packets > 0).then_some(())?;
    Some(DropRow {
        node: get("node")?.to_owned(),
        peer_node: get("peer_node")?.to_owned(),
        direction: Direction::from_label(get("direction")?)?,
        overlay: Overlay::from_label(get("overlay")?)?,
        src_net: Net::from_label(get("src_net")?)?,
        dst_net: Net::from_label(get("dst_net")?)?,
        reason: get("reason")?.to_owned(),
        packets,
    })
}

/// Every hook kind and direction of a node that was blind at some point
/// of the `window` before the reading's end.
fn blind_expr(window: Duration) -> String {
    format!(
        "max by (node, hook, direction) \
         (max_over_time(crossover_hooks_blind{{job=\"{JOB}\"}}[{}ms])) > 0",
        window.as_millis()
    )
}

/// `unless` clauses leaving out every series whose node or peer node had
/// a blind underlay in the `window`.
fn blind_underlay_exclusion(window: Duration) -> String {
    let blind = format!(
        "(max by (node) (max_over_time(crossover_hooks_blind{{job=\"{JOB}\", \
         hook=\"underlay\"}}[{}ms])) > 0)",
        window.as_millis()
    );
    format!(
        " unless on (node) {blind} unless on (peer_node) \
         label_replace({blind}, \"peer_node\", \"$1\", \"node\", \"(.*)\")"
    )
}

/// Blind hooks by node from [`blind_expr`]'s series: counted, not named
/// (the metric has no interface label: pod veths are many).
fn node_blind(series: &[Sample]) -> Vec<NodeBlind> {
    let mut by_node: BTreeMap<String, Vec<BlindCount>> = BTreeMap::new();
    for s in series {
        let get = |name: &str| s.metric.get(name).map(String::as_str);
        let (Some(node), Some(Ok(hook)), Some(direction), Ok(blind)) = (
            get("node"),
            get("hook").map(str::parse),
            get("direction").and_then(Direction::from_label),
            s.value.1.parse::<f64>(),
        ) else {
            continue;
        };
        by_node
            .entry(node.to_owned())
            .or_default()
            .push(BlindCount {
                hook,
                direction,
                blind: blind.max(0.0).round() as u64,
            });
    }
    by_node
        .into_iter()
        .map(|(node, mut counts)| {
            counts.sort_by_key(|c| (c.hook, c.direction));
            NodeBlind {
                node,
                hooks: BlindHooks {
                    counts,
                    named: Vec::new(),
                },
            }
        })
        .collect()
}

/// One reading from the Prometheus server at `url` (its base URL): the
/// cluster totals per signal, overlay and network pair, every row of the
/// nodes in `options.focus`, and the `options.top` worst rows with at
/// least `options.min_sent` sent, over the records' newest evaluation.
/// Agents Prometheus finds down, nodes of `options.expect` it has no
/// series of, a focus node without a record and a reading without any
/// record are `failed`: their pairs are missing, not lossless. A server
/// that cannot be read, or without crossover's rules, is an error.
pub async fn read(
    client: &Client,
    url: &str,
    options: &ReadOptions,
    now: SystemTime,
) -> Result<ClusterReading> {
    let records = records(client, url, now).await?;
    read_records(client, url, options, &records).await
}

/// [`read`] of records already found.
pub async fn read_records(
    client: &Client,
    url: &str,
    options: &ReadOptions,
    records: &Records,
) -> Result<ClusterReading> {
    let terms = records.terms(options.window);
    if terms > MAX_TERMS {
        return Err(Error::Prometheus {
            url: url.to_owned(),
            reason: format!(
                "a window of {terms} records of {}: a reading sums at most {MAX_TERMS}",
                humantime::format_duration(records.window)
            ),
        });
    }
    let to = records.evaluated_ms;
    let window = records.reading_window(options.window);
    let seconds = window.as_secs_f64();
    let mut requests = 1;
    let mut reading = ClusterReading {
        from_ms: to.saturating_sub(window.as_millis() as u64),
        to_ms: to,
        ..ClusterReading::default()
    };
    // Hooks that ran behind another program in the window. A node whose
    // underlay did has no figure that is what crossed its NIC: its pairs
    // are left out of every query (as its agent refuses a reading), and
    // said so; its other blind hooks are listed, as the agents list them.
    requests += 1;
    let blind_series = query(client, url, &blind_expr(window), to).await?;
    reading.blind = node_blind(&blind_series);
    let blind_underlays: Vec<&NodeBlind> = reading
        .blind
        .iter()
        .filter(|b| b.hooks.underlay())
        .collect();
    for b in &blind_underlays {
        reading.failed.push(FailedAgent {
            agent: b.node.clone(),
            error: format!(
                "{}: its underlay ran behind another program in the window \
                 (crossover_hooks_blind): its pairs are left out",
                b.node
            ),
            refused: false,
        });
    }
    let exclude = (!blind_underlays.is_empty()).then(|| blind_underlay_exclusion(window));
    let over = |record: &str, selector: &str| {
        let expr = over(record, selector, terms, records.window);
        match &exclude {
            Some(unless) => format!("({expr}{unless})"),
            None => expr,
        }
    };
    let (sent, lost) = (records.sent.as_str(), records.lost.as_str());
    let mut unreadable = 0;
    let mut rows = |figures: Figures| -> Vec<LossRow> {
        let rows: Vec<LossRow> = figures
            .iter()
            .filter_map(|(labels, f)| row(labels, *f, seconds))
            .collect();
        unreadable += figures.len() - rows.len();
        rows
    };
    let missing = |error: String| FailedAgent {
        agent: url.to_owned(),
        error,
        refused: false,
    };

    let total = |record| {
        format!(
            "sum by (overlay, src_net, dst_net, signal) ({})",
            over(record, "")
        )
    };
    let totals = sent_and_lost(client, url, to, [total(sent), total(lost)], &mut requests).await?;
    reading.totals = rows(totals);
    if reading.totals.is_empty() {
        reading.failed.push(missing(format!(
            "no sample of {sent}: the rules run but recorded nothing (the agents scraped for \
             less than two record windows, or not as job {JOB})"
        )));
    }

    let mut found = Vec::new();
    if !options.focus.is_empty() {
        let nodes = any_of(&options.focus);
        let focus = |record| {
            format!(
                "{} or {}",
                over(record, &format!("{{node=~\"{nodes}\"}}")),
                over(record, &format!("{{peer_node=~\"{nodes}\"}}"))
            )
        };
        let exprs = [focus(sent), focus(lost)];
        found.extend(rows(
            sent_and_lost(client, url, to, exprs, &mut requests).await?,
        ));
        for node in &options.focus {
            let blind = blind_underlays.iter().any(|b| b.node == *node);
            if !blind
                && !found
                    .iter()
                    .any(|r| r.node == *node || r.peer_node == *node)
            {
                reading.failed.push(missing(format!(
                    "no record of node {node}'s pairs: its agent is not scraped, or its series \
                     are younger than two record windows"
                )));
            }
        }
    }
    let worst = format!(
        "topk({}, {} / ({} >= {}))",
        options.top,
        over(lost, ""),
        over(sent, ""),
        options.min_sent
    );
    let of_worst = |record| format!("{} and on ({ROW}) {worst}", over(record, ""));
    let exprs = [of_worst(sent), of_worst(lost)];
    found.extend(rows(
        sent_and_lost(client, url, to, exprs, &mut requests).await?,
    ));
    found.sort_by(LossRow::worse);
    found.dedup_by(|a, b| a.key() == b.key());
    reading.rows = found;

    // The path MTU of the rows of signal mtu, selected as the rows were,
    // and of the totals (the least sizes, every ICMP summed, as a sum of
    // the agents' rows merges them).
    let mtu_rows = reading
        .rows
        .iter()
        .chain(&reading.totals)
        .any(|r| r.signal == Signal::Mtu);
    if mtu_rows {
        // Without the blind underlays' pairs, as every figure here.
        let kept = |expr: String| match &exclude {
            Some(unless) => format!("({expr}{unless})"),
            None => format!("({expr})"),
        };
        let gauges = |selector: &str| kept(format!("{PATH_MTU}{selector}"));
        let icmp = |selector: &str| {
            kept(format!(
                "label_replace({FRAG_NEEDED}{selector}, \"kind\", \"{FRAG_KIND}\", \"\", \"\")"
            ))
        };
        let path = |selector: &str| format!("({} or {})", gauges(selector), icmp(selector));
        let by = "by (overlay, src_net, dst_net, signal, kind)";
        let mut expr = format!(
            "min {by} {} or sum {by} {} or {} and on ({ROW}) {worst}",
            gauges(""),
            icmp(""),
            path("")
        );
        if !options.focus.is_empty() {
            let nodes = any_of(&options.focus);
            for label in ["node", "peer_node"] {
                expr += &format!(" or {}", path(&format!("{{{label}=~\"{nodes}\"}}")));
            }
        }
        requests += 1;
        let paths = path_mtus(&query(client, url, &expr, to).await?);
        for r in reading.rows.iter_mut().chain(&mut reading.totals) {
            if r.signal == Signal::Mtu {
                let key = (r.node.clone(), r.peer_node.clone(), r.overlay, r.dst_net);
                r.mtu = paths.get(&key).copied();
            }
        }
    }

    // The ICMP fragmentation needed about the nodes' own traffic, joined
    // into the mtu rows as the agents join theirs: the focus nodes' paths
    // and the `top` most told, with the smallest size any said fits in
    // the window.
    requests += 1;
    let told = |selector: &str| over(&records.icmp_frag_needed, selector);
    let mut selected = format!("topk({}, {} > 0)", options.top, told(""));
    if !options.focus.is_empty() {
        let nodes = any_of(&options.focus);
        for label in ["node", "peer_node"] {
            selected += &format!(" or ({} > 0)", told(&format!("{{{label}=~\"{nodes}\"}}")));
        }
    }
    let fits = format!(
        "min by ({ROW}) (min_over_time({ICMP_FITS}[{}])) and on (node, peer_node, overlay) ({selected})",
        promql_duration(window)
    );
    let expr = format!(
        "label_replace({selected}, \"kind\", \"{FRAG_KIND}\", \"\", \"\") \
         or label_replace({fits}, \"kind\", \"icmp_next_hop\", \"\", \"\")"
    );
    let told = path_mtus(&query(client, url, &expr, to).await?);
    join_told(&mut reading, told, seconds);

    // The kernel's drops over the window: the focus nodes' (both ends),
    // then the largest.
    requests += 1;
    let drops = |selector: &str| {
        format!(
            "sum by (node, peer_node, direction, overlay, src_net, dst_net, reason) \
             (increase(crossover_drops_total{{job=\"{JOB}\", overlay!=\"none\", peer_node!~\"[*]|none\"{selector}}}[{}ms]))",
            window.as_millis()
        )
    };
    let mut expr = format!("topk({}, {})", options.top, drops(""));
    if !options.focus.is_empty() {
        let nodes = any_of(&options.focus);
        for label in ["node", "peer_node"] {
            expr += &format!(" or {}", drops(&format!(", {label}=~\"{nodes}\"")));
        }
    }
    reading.drops = query(client, url, &expr, to)
        .await?
        .iter()
        .filter_map(drop_row)
        .collect();
    reading.drops.sort_by(DropRow::worse);

    // The agents, as Prometheus last scraped them.
    requests += 1;
    let up = query(client, url, &format!("up{{job=\"{JOB}\"}}"), to).await?;
    if up.is_empty() {
        reading.failed.push(missing(format!(
            "no target of job {JOB}: Prometheus does not scrape the agents (the shipped \
             ServiceMonitor, docs/metrics.md)"
        )));
    }
    for s in up {
        if s.value.1 == "1" {
            reading.answered += 1;
        } else {
            let instance = s.metric.get("instance").cloned().unwrap_or_default();
            reading.failed.push(FailedAgent {
                agent: instance,
                error: "down: Prometheus cannot scrape it (up == 0)".into(),
                refused: false,
            });
        }
    }
    // Nodes with an agent Prometheus has no series of: scraped under
    // another job, or not at all.
    if !options.expect.is_empty() {
        requests += 1;
        let scraped: BTreeSet<String> =
            query(client, url, "group by (node) (crossover_build_info)", to)
                .await?
                .into_iter()
                .filter_map(|s| s.metric.get("node").cloned())
                .collect();
        for node in options.expect.iter().filter(|n| !scraped.contains(*n)) {
            reading.failed.push(missing(format!(
                "no series of node {node}'s agent: Prometheus does not scrape it"
            )));
        }
    }
    if unreadable > 0 {
        reading.failed.push(missing(format!(
            "{unreadable} series with a label value crossover does not know (another version's rules?)"
        )));
    }
    reading.requests = requests;
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: &[(&str, &str)], value: &str) -> Sample {
        Sample {
            metric: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: (0.0, value.into()),
        }
    }

    #[test]
    fn path_mtus_come_from_their_kinds_by_row_and_total() {
        let row = |kind| {
            [
                ("node", "a"),
                ("peer_node", "b"),
                ("overlay", "cilium"),
                ("src_net", "host"),
                ("dst_net", "host"),
                ("signal", "mtu"),
                ("kind", kind),
            ]
        };
        let total = |kind| {
            [
                ("overlay", "cilium"),
                ("src_net", "host"),
                ("dst_net", "host"),
                ("signal", "mtu"),
                ("kind", kind),
            ]
        };
        let samples = [
            sample(&row("probed"), "1450"),
            sample(&row("fits"), "1400"),
            sample(&row(FRAG_KIND), "0"),
            sample(&total("probed"), "1300"),
            sample(&total("icmp_next_hop"), "1300"),
            sample(&total(FRAG_KIND), "3"),
            // Not crossover's: left out.
            sample(&total("probed")[1..], "1"),
            sample(
                &[
                    ("overlay", "vxlan"),
                    ("dst_net", "host"),
                    ("kind", "probed"),
                ],
                "1",
            ),
        ];
        let paths = path_mtus(&samples);
        assert_eq!(paths.len(), 2, "{paths:?}");
        let key = |node: &str, peer: &str| (node.into(), peer.into(), Overlay::Cilium, Net::Host);
        assert_eq!(
            paths[&key("a", "b")],
            PathMtu {
                probed: 1450,
                fits: Some(1400),
                icmp_next_hop: None,
                icmp_frag_needed: 0,
            }
        );
        assert_eq!(
            paths[&key(CLUSTER, CLUSTER)],
            PathMtu {
                probed: 1300,
                fits: None,
                icmp_next_hop: Some(1300),
                icmp_frag_needed: 3,
            }
        );
    }

    /// What ICMP told of the nodes' traffic joins the pair's mtu row (the
    /// large probes') or makes one, nothing sent or lost, and the
    /// overlay's mtu total, as the agents' rows are joined.
    #[test]
    fn the_traffics_icmp_joins_the_mtu_rows_and_totals() {
        let labels = |node: &str, peer: &str, overlay: &str| {
            let mut out: Vec<(String, String)> = vec![
                ("node".into(), node.into()),
                ("peer_node".into(), peer.into()),
                ("overlay".into(), overlay.into()),
            ];
            for (k, v) in [("src_net", "host"), ("dst_net", "host"), ("signal", "mtu")] {
                out.push((k.into(), v.into()));
            }
            out
        };
        let probed = {
            let mut r = row(&labels("a", "b", "cilium"), (10.0, 0.0), 60.0).unwrap();
            r.mtu = Some(PathMtu {
                probed: 1450,
                ..PathMtu::default()
            });
            r
        };
        let mut reading = ClusterReading {
            rows: vec![probed],
            ..ClusterReading::default()
        };
        let kinds = |node, peer, overlay, (n, fits)| {
            [(FRAG_KIND, n), ("icmp_next_hop", fits)].map(|(kind, value)| {
                let l = labels(node, peer, overlay);
                let mut l: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                l.push(("kind", kind));
                sample(&l, value)
            })
        };
        let mut samples = Vec::new();
        samples.extend(kinds("a", "b", "cilium", ("2", "1350")));
        samples.extend(kinds("a", "c", "legacy", ("1", "1300")));
        // Told nothing in the window: no row.
        samples.extend(kinds("c", "a", "legacy", ("0", "1300")));
        join_told(&mut reading, path_mtus(&samples), 60.0);

        assert_eq!(reading.rows.len(), 2, "{:#?}", reading.rows);
        let a_b = &reading.rows[0];
        assert_eq!(
            a_b.mtu,
            Some(PathMtu {
                probed: 1450,
                fits: None,
                icmp_next_hop: Some(1350),
                icmp_frag_needed: 2,
            })
        );
        let a_c = &reading.rows[1];
        assert_eq!(
            (a_c.node.as_str(), a_c.peer_node.as_str(), a_c.overlay),
            ("a", "c", Overlay::Legacy)
        );
        assert_eq!((a_c.signal, a_c.sent, a_c.lost), (Signal::Mtu, 0, 0));
        assert_eq!(a_c.mtu.unwrap().icmp_next_hop, Some(1300));
        let totals: Vec<(Overlay, u64)> = reading
            .totals
            .iter()
            .map(|t| (t.overlay, t.mtu.unwrap().icmp_frag_needed))
            .collect();
        assert_eq!(totals, vec![(Overlay::Legacy, 1), (Overlay::Cilium, 2)]);
        assert!(reading.totals.iter().all(|t| t.is_total()));
    }

    #[test]
    fn rows_come_from_labels_and_rounded_figures() {
        let labels: Vec<(String, String)> = [
            ("node", "a"),
            ("peer_node", "b"),
            ("overlay", "cilium"),
            ("src_net", "legacy"),
            ("dst_net", "cilium"),
            ("signal", "delivery"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let r = row(&labels, (1000.4, 49.6), 60.0).unwrap();
        assert_eq!((r.sent, r.lost), (1000, 50));
        assert_eq!((r.overlay, r.signal), (Overlay::Cilium, Signal::Delivery));
        // A receiver scraped a hair later than its sender: no negative loss.
        assert_eq!(row(&labels, (10.0, -0.3), 60.0).unwrap().lost, 0);
        // Totals have no node labels.
        let total = row(&labels[2..], (5.0, 1.0), 60.0).unwrap();
        assert_eq!(
            (total.node.as_str(), total.peer_node.as_str()),
            (CLUSTER, CLUSTER)
        );
        let mut bad = labels.clone();
        bad[2].1 = "vxlan".into();
        assert!(row(&bad, (1.0, 0.0), 60.0).is_none());
        assert_eq!(any_of(&["a.b".into(), "c".into()]), "a\\\\.b|c");
        let record = "crossover:signal_sent:increase10s";
        let ten = Duration::from_secs(10);
        assert_eq!(
            over(record, "{a=\"b\"}", 1, ten),
            "crossover:signal_sent:increase10s{a=\"b\"}"
        );
        let two = over(record, "", 2, ten);
        assert!(
            two.contains(" or label_replace(crossover:signal_sent:increase10s offset 10000ms, "),
            "{two}"
        );
    }
}
