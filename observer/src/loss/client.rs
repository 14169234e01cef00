//! The readers' HTTP client: every agent over a kept-alive connection,
//! many at once, each answer bounded in time and size. Redirects are not
//! followed: an agent answers itself. With [`Credentials`] every request
//! carries the kubeconfig's (or service account's) bearer token, which
//! agents check with the API server (agent/auth.rs); an agent refusing it
//! is [`Error::Refused`], never "no answer".
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{self, HeaderValue};
use hyper_util::{
    client::legacy::{Client as Pool, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::de::DeserializeOwned;
use tower::{BoxError, ServiceExt, util::BoxCloneSyncService};

use crate::{Error, Result};

/// Largest answer read from an agent.
pub const MAX_BODY: usize = 16 << 20;
/// Requests in flight at once, whatever the number of agents.
pub const MAX_IN_FLIGHT: usize = 256;

#[derive(Clone)]
pub struct Client {
    pool: Pool<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    credentials: Option<Credentials>,
}

/// The `Authorization` header a kube-rs client would send: a static
/// token, a token file re-read as it rotates (in-cluster service
/// accounts), an exec plugin's token. Client certificates carry no token:
/// agents that check tokens then answer 401.
#[derive(Clone)]
pub struct Credentials {
    stamp: BoxCloneSyncService<
        hyper::Request<Empty<Bytes>>,
        hyper::Response<Option<HeaderValue>>,
        BoxError,
    >,
    /// Where they come from, for errors.
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({})", self.source)
    }
}

impl Credentials {
    /// The bearer token of `config`'s user, if it has one.
    pub fn from_config(config: &kube::Config, source: &str) -> Result<Option<Credentials>> {
        use kube::client::ConfigExt;
        let layer = config.auth_layer().map_err(|e| Error::Kube {
            context: format!("credentials of {source}"),
            reason: e.to_string(),
        })?;
        let Some(layer) = layer else {
            return Ok(None);
        };
        // kube-rs's own auth layer over a service that only reads back
        // the header it set.
        let read_back = tower::service_fn(|request: hyper::Request<Empty<Bytes>>| async move {
            let value = request.headers().get(header::AUTHORIZATION).cloned();
            Ok::<_, BoxError>(hyper::Response::new(value))
        });
        Ok(Some(Credentials {
            stamp: BoxCloneSyncService::new(tower::Layer::layer(&layer, read_back)),
            source: source.to_owned(),
        }))
    }

    /// The header value for the next request (a refreshed token when it
    /// rotated).
    async fn header(&self) -> std::result::Result<Option<HeaderValue>, String> {
        let request = hyper::Request::new(Empty::new());
        self.stamp
            .clone()
            .oneshot(request)
            .await
            .map(hyper::Response::into_body)
            .map_err(|e| format!("getting a token from {}: {e}", self.source))
    }
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
        Client {
            pool,
            timeout,
            credentials: None,
        }
    }

    /// Every request with this bearer token.
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
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
            let mut request = hyper::Request::get(uri)
                .body(Empty::new())
                .map_err(|e| fail(format!("GET {url}: {e}")))?;
            if let Some(credentials) = &self.credentials
                && let Some(value) = credentials.header().await.map_err(fail)?
            {
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
            let response = self
                .pool
                .request(request)
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
            if matches!(
                status,
                hyper::StatusCode::UNAUTHORIZED | hyper::StatusCode::FORBIDDEN
            ) {
                let text = String::from_utf8_lossy(&body[..body.len().min(500)]);
                return Err(Error::Refused {
                    agent: base.to_owned(),
                    status: status.as_u16(),
                    reason: format!(
                        "{}{}",
                        text.trim(),
                        match (&self.credentials, status.as_u16()) {
                            (None, 401) => " (this reader sent no token: it has none from a \
                                kubeconfig or service account; client certificates carry none)"
                                .to_owned(),
                            (Some(c), _) => format!(" (token from {})", c.source),
                            _ => String::new(),
                        }
                    ),
                });
            }
            if !status.is_success() {
                if let Ok(r) = serde_json::from_slice::<super::blind::BlindRefusal>(&body) {
                    return Err(Error::Blind {
                        agent: base.to_owned(),
                        reason: format!("GET {url}: {status}: {}", r.error),
                        blind: Box::new(r.blind),
                    });
                }
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
