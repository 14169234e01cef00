//! Label and field selectors, in the syntax `kubectl -l` / `--field-selector`
//! and kube-rs's `ListParams` send.
use std::collections::BTreeSet;

use serde_json::Value;

use super::status::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A conjunction of label requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`,
    /// joined by commas.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad =
            |m: &str| ApiError::bad_request(format!("unable to parse labelSelector {s:?}: {m}"));
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = set_term(term, " notin ") {
                Requirement::NotIn(k, set.ok_or_else(|| bad("bad value set"))?)
            } else if let Some((k, set)) = set_term(term, " in ") {
                Requirement::In(k, set.ok_or_else(|| bad("bad value set"))?)
            } else if term.contains(char::is_whitespace) || term.contains('(') {
                return Err(bad(&format!("bad requirement {term:?}")));
            } else {
                Requirement::Exists(term.to_string())
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, set) => label(k).is_some_and(|l| set.contains(l)),
            Requirement::NotIn(k, set) => label(k).is_none_or(|l| !set.contains(l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// `key in (a, b)` split at the operator; `None` set when the parentheses
/// are missing.
fn set_term(term: &str, op: &str) -> Option<(String, Option<BTreeSet<String>>)> {
    let (key, rest) = term.split_once(op)?;
    let set = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        });
    Some((key.trim().to_string(), set))
}

/// Splits on commas outside parentheses, so `a in (x,y),b` is two terms.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A conjunction of `path=value` / `path!=value` terms over dotted paths
/// (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`).
/// The real server only allows a few fields per kind; this one accepts any
/// path, and an absent field compares as the empty string, as Kubernetes
/// does for `spec.nodeName=` (unscheduled pods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, eq, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {s:?}: {term:?} is not field=value or field!=value"
                )));
            };
            terms.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    /// Both selectors' terms.
    pub fn and(mut self, other: FieldSelector) -> FieldSelector {
        self.0.extend(other.0);
        self
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let got = path
                .split('.')
                .try_fold(obj, |v, k| v.get(k))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (got == *want) == *eq
        })
    }
}

/// Both selectors of a list or watch request.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(labels.unwrap_or(""))?,
            fields: FieldSelector::parse(fields.unwrap_or(""))?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "kube-system",
                         "labels": {"k8s-app": "cilium", "tier": "node"}},
            "spec": {"nodeName": "node-1"},
        })
    }

    #[test]
    fn labels() {
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&pod());
        assert!(m(""));
        assert!(m("k8s-app=cilium"));
        assert!(m("k8s-app==cilium,tier"));
        assert!(!m("k8s-app!=cilium"));
        assert!(m("!missing"));
        assert!(!m("missing"));
        assert!(m("k8s-app in (flannel, cilium),tier notin (web)"));
        assert!(!m("k8s-app notin (cilium)"));
        assert!(LabelSelector::parse("a in b").is_err());
    }

    #[test]
    fn fields() {
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod());
        assert!(m("spec.nodeName=node-1,metadata.namespace=kube-system"));
        assert!(!m("spec.nodeName!=node-1"));
        assert!(m("status.phase="));
        assert!(FieldSelector::parse("spec.nodeName").is_err());
    }
}
