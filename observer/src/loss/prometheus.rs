//! A reading of the cluster from Prometheus instead of the agents. The
//! shipped recording rules (manifests/monitoring/prometheusrule.yaml,
//! docs/metrics.md) already join every node's sends with its peer's
//! receives, per minute; this sums their records over the window into the
//! same totals and rows a reading of the agents gives, so `crossover loss
//! --prometheus` prints them alike. Every query is bounded: totals by
//! signals x overlays x network pairs, rows by the focus nodes' pairs and
//! `top`, whatever the cluster's size.
//!
//! The figures are Prometheus' (`increase()` over scrapes that are not
//! simultaneous: docs/metrics.md, "What the rules cannot see"), over whole
//! minutes: the window is rounded up to minutes (at most
//! [`MAX_MINUTES`]) and ends at the rules' newest evaluation.
use std::{collections::BTreeMap, time::SystemTime};

use observer_ebpf::{Net, Overlay};
use serde::Deserialize;

use super::{
    CLUSTER, LossRow, Signal,
    client::Client,
    cluster::{ClusterReading, FailedAgent, ReadOptions},
    ring::unix_ms,
};
use crate::{Error, Result};

/// The records summed: per node pair, overlay, network pair and signal,
/// what was sent and lost in the minute before each evaluation.
pub const SENT: &str = "crossover:signal_sent:increase1m";
pub const LOST: &str = "crossover:signal_lost:increase1m";
/// The scrape job the shipped ServiceMonitor makes (the alerts' too).
pub const JOB: &str = "crossover-agent";
/// The labels of a row.
const ROW: &str = "node, peer_node, overlay, src_net, dst_net, signal";

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    data: Option<Data>,
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

/// One instant query at `at` (Unix seconds): its samples.
async fn query(client: &Client, url: &str, expr: &str, at: u64) -> Result<Vec<Sample>> {
    let path = format!(
        "/api/v1/query?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &at.to_string())
            .finish()
    );
    let answer: Answer = client
        .get_json(url, &path, "Prometheus query answer")
        .await?;
    if answer.status != "success" {
        return Err(Error::Agent {
            agent: url.to_owned(),
            reason: format!("query {expr:?}: {}", answer.error),
        });
    }
    Ok(answer.data.map(|d| d.result).unwrap_or_default())
}

/// The longest window a reading sums: one term a minute.
pub const MAX_MINUTES: u64 = 60;

/// `record` summed over the `minutes` before the query's instant: the
/// records of now, a minute ago, ... (a subquery's steps would fall on
/// whole minutes instead, up to a minute stale). Each minute's series
/// gets its own `minute` label so that `or` keeps them all for the sum.
fn over(record: &str, selector: &str, minutes: u64) -> String {
    if minutes <= 1 {
        return format!("{record}{selector}");
    }
    let terms: Vec<String> = (0..minutes)
        .map(|k| {
            let offset = if k == 0 {
                String::new()
            } else {
                format!(" offset {k}m")
            };
            format!("label_replace({record}{selector}{offset}, \"minute\", \"{k}\", \"\", \"\")")
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
    at: u64,
    [sent, lost]: [String; 2],
    requests: &mut usize,
) -> Result<Figures> {
    let mut figures = Figures::new();
    for (i, expr) in [sent, lost].iter().enumerate() {
        *requests += 1;
        for s in query(client, url, expr, at).await? {
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
    })
}

/// One reading from the Prometheus server at `url` (its base URL): the
/// cluster totals per signal, overlay and network pair, every row of the
/// nodes in `options.focus`, and the `options.top` worst rows with at
/// least `options.min_sent` sent. Agents Prometheus finds down are
/// `failed`: their pairs are missing, not lossless.
pub async fn read(
    client: &Client,
    url: &str,
    options: &ReadOptions,
    now: SystemTime,
) -> Result<ClusterReading> {
    let minutes = options.window.as_secs().div_ceil(60).max(1);
    if minutes > MAX_MINUTES {
        return Err(Error::Agent {
            agent: url.to_owned(),
            reason: format!(
                "a window of {minutes} minutes: a reading from Prometheus sums at most {MAX_MINUTES}"
            ),
        });
    }
    let to = unix_ms(now) / 1000;
    let seconds = (minutes * 60) as f64;
    let mut requests = 0;
    let mut reading = ClusterReading {
        from_ms: (to - minutes * 60) * 1000,
        to_ms: to * 1000,
        ..ClusterReading::default()
    };
    let mut unreadable = 0;
    let mut rows = |figures: Figures| -> Vec<LossRow> {
        let rows: Vec<LossRow> = figures
            .iter()
            .filter_map(|(labels, f)| row(labels, *f, seconds))
            .collect();
        unreadable += figures.len() - rows.len();
        rows
    };

    let total = |record| {
        format!(
            "sum by (overlay, src_net, dst_net, signal) ({})",
            over(record, "", minutes)
        )
    };
    let totals = sent_and_lost(client, url, to, [total(SENT), total(LOST)], &mut requests).await?;
    reading.totals = rows(totals);

    let mut found = Vec::new();
    if !options.focus.is_empty() {
        let nodes = any_of(&options.focus);
        let focus = |record| {
            format!(
                "{} or {}",
                over(record, &format!("{{node=~\"{nodes}\"}}"), minutes),
                over(record, &format!("{{peer_node=~\"{nodes}\"}}"), minutes)
            )
        };
        let exprs = [focus(SENT), focus(LOST)];
        found.extend(rows(
            sent_and_lost(client, url, to, exprs, &mut requests).await?,
        ));
    }
    let worst = format!(
        "topk({}, {} / ({} >= {}))",
        options.top,
        over(LOST, "", minutes),
        over(SENT, "", minutes),
        options.min_sent
    );
    let of_worst = |record| format!("{} and on ({ROW}) {worst}", over(record, "", minutes));
    let exprs = [of_worst(SENT), of_worst(LOST)];
    found.extend(rows(
        sent_and_lost(client, url, to, exprs, &mut requests).await?,
    ));
    found.sort_by(LossRow::worse);
    found.dedup_by(|a, b| a.key() == b.key());
    reading.rows = found;

    // The agents, as Prometheus last scraped them.
    requests += 1;
    for s in query(client, url, &format!("up{{job=\"{JOB}\"}}"), to).await? {
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
    if unreadable > 0 {
        reading.failed.push(FailedAgent {
            agent: url.to_owned(),
            error: format!(
                "{unreadable} series with a label value crossover does not know (another version's rules?)"
            ),
            refused: false,
        });
    }
    reading.requests = requests;
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            over(SENT, "{a=\"b\"}", 1),
            "crossover:signal_sent:increase1m{a=\"b\"}"
        );
        let two = over(SENT, "", 2);
        assert!(
            two.contains(" or label_replace(crossover:signal_sent:increase1m offset 1m, "),
            "{two}"
        );
    }
}
