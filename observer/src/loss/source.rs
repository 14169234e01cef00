//! Where a reading comes from: the agents themselves (each asked for its
//! half of an aligned window), or the Prometheus server that scrapes them
//! with the shipped recording rules loaded. Written as the SRE passes it
//! (`--source agents`, `--source prometheus=http://prometheus:9090`) and
//! kept with every gate decision, so a record says what it was judged on.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Every agent, over the aligned window of their ticks.
    #[default]
    Agents,
    /// The shipped rules' records in the Prometheus server at this base
    /// URL (`http://host:port`, a path prefix allowed).
    Prometheus(String),
}

impl Source {
    pub fn is_agents(&self) -> bool {
        *self == Source::Agents
    }
}

const EXAMPLE: &str = "prometheus=http://prometheus.monitoring:9090";

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "agents" {
            return Ok(Source::Agents);
        }
        let url = match s.split_once('=') {
            Some(("prometheus", url)) => url.trim(),
            None if s == "prometheus" => "",
            _ => return Err(format!("{s:?}: expected agents or {EXAMPLE}")),
        };
        if url.is_empty() {
            return Err(format!(
                "{s:?} names no Prometheus: write {EXAMPLE} (its base URL)"
            ));
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e}): write {EXAMPLE}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "{url:?}: only an http:// URL with a host is supported, e.g. {EXAMPLE}"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: a base URL has no query string"));
        }
        Ok(Source::Prometheus(url.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Agents => f.write_str("the agents"),
            Source::Prometheus(url) => write!(f, "Prometheus at {url}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_as_written_and_bad_ones_say_why() {
        assert_eq!("agents".parse(), Ok(Source::Agents));
        assert_eq!(
            "prometheus=http://prom:9090/".parse(),
            Ok(Source::Prometheus("http://prom:9090".into()))
        );
        for (bad, why) in [
            ("prometheus=", "names no Prometheus"),
            ("prometheus", "names no Prometheus"),
            ("prometheus=prom:9090", "only an http:// URL"),
            ("prometheus=https://prom", "only an http:// URL"),
            ("prometheus=http://prom/?x=1", "no query string"),
            ("thanos=http://q", "expected agents or prometheus="),
            ("prometheus=http://a b", "is not a URL"),
        ] {
            let e = bad.parse::<Source>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // Kept in records by name.
        let json = serde_json::to_string(&Source::Prometheus("http://p:9090".into())).unwrap();
        assert_eq!(json, r#"{"prometheus":"http://p:9090"}"#);
        assert_eq!(
            serde_json::to_string(&Source::Agents).unwrap(),
            "\"agents\""
        );
    }
}
