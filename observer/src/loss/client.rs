//! The readers' HTTP client: every agent over a kept-alive connection,
//! many at once, each answer bounded in time and size. Redirects are not
//! followed: an agent answers itself.
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{Client as Pool, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Largest answer read from an agent.
pub const MAX_BODY: usize = 16 << 20;
/// Requests in flight at once, whatever the number of agents.
pub const MAX_IN_FLIGHT: usize = 256;

#[derive(Clone)]
pub struct Client {
    pool: Pool<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Client {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let pool = Pool::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .build(connector);
        Client { pool, timeout }
    }

    /// GET `base` + `path` as JSON: `what` names it in errors.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        what: &str,
    ) -> Result<T> {
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let fail = |reason: String| Error::Agent {
            agent: base.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| fail(format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(fail(format!("{url}: only http:// agents are supported")));
        }
        let ask = async {
            let response = self
                .pool
                .get(uri)
                .await
                .map_err(|e| fail(format!("GET {url}: did not answer: {}", chain(&e))))?;
            let status = response.status();
            if status.is_redirection() {
                let to = response
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("nowhere");
                return Err(fail(format!(
                    "GET {url}: {status} to {to}: redirects are not followed; give the agent's own address"
                )));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(format!("GET {url}: reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(fail(format!("GET {url}: {status}: {}", text.trim())));
            }
            serde_json::from_slice(&body).map_err(|e| {
                // Another version's answer fails to parse first: say so.
                #[derive(serde::Deserialize)]
                struct Versioned {
                    version: u32,
                }
                match serde_json::from_slice::<Versioned>(&body) {
                    Ok(v) if v.version != 1 => {
                        fail(format!("speaks API version {}, not 1", v.version))
                    }
                    _ => fail(format!("{url} is not a v1 {what}: {e}")),
                }
            })
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| fail(format!("GET {url}: no answer within {:?}", self.timeout)))?
    }

    /// Asks every `(base, path)` at once (at most [`MAX_IN_FLIGHT`] in
    /// flight) and hands each answer to `each` as it comes, so a reader
    /// holds what it sums, not every answer.
    pub async fn each<T: DeserializeOwned>(
        &self,
        asks: impl IntoIterator<Item = (usize, String, String)>,
        what: &str,
        mut each: impl FnMut(usize, Result<T>),
    ) {
        let mut answers = stream::iter(asks)
            .map(|(i, base, path)| async move { (i, self.get_json::<T>(&base, &path, what).await) })
            .buffer_unordered(MAX_IN_FLIGHT);
        while let Some((i, answer)) = answers.next().await {
            each(i, answer);
        }
    }
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}
