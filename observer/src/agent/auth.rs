//! Who may read the agent: the kube-rbac-proxy model. Every JSON API
//! request (and `/metrics` with `--auth-metrics`) carries
//! `Authorization: Bearer TOKEN`; the token is authenticated with a
//! TokenReview (authentication.k8s.io/v1) and the user it names is
//! authorized with a SubjectAccessReview (authorization.k8s.io/v1) for the
//! non-resource URL of the request, verb `get`, as the API server
//! authorizes its own `/metrics` or `/healthz`: an SRE grants
//! `nonResourceURLs: ["/api/v1/*"]` (or single paths) with verb `get`.
//!
//! Answers are cached per token (its SHA-256, never the token itself):
//! a reader polling every agent costs each agent two API calls per TTL,
//! not two per request. The caches are bounded and counted; API errors
//! and timeouts are never cached and answer 503, bounded by
//! `--auth-timeout`.
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State as Extract},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use clap::{Args, ValueEnum};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, api::PostParams};

use crate::{Error, Result};

/// When the agent checks tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// On when the agent follows a cluster (no --config), off with a
    /// shape file.
    Auto,
    /// Always; with --config the API server is found from --kubeconfig,
    /// in-cluster credentials or $KUBECONFIG.
    On,
    /// Never: anyone who reaches the port reads everything.
    Off,
}

#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// Bearer tokens on /api/v1 checked with TokenReview and
    /// SubjectAccessReview (non-resource URL, verb get): auto is on with
    /// Kubernetes, off with --config (docs/agent.md, "Who may read").
    #[arg(long = "auth", value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// /metrics checked the same way (open by default, for scrapers
    /// without a token).
    #[arg(long)]
    pub auth_metrics: bool,
    /// How long an allowed token (and an allowed path) is trusted without
    /// asking again; denials and invalid tokens are kept at most
    /// 10s.
    #[arg(long, default_value = "2m", value_parser = crate::duration::parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Tokens remembered at once; the one expiring first makes room.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub auth_cache_entries: u32,
    /// The longest a request waits for the API server's review; then 503.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse_duration)]
    pub auth_timeout: Duration,
}

/// Denials and invalid tokens are asked again after this at the latest:
/// a binding just created takes effect soon.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Reviews in flight at once; more wait (within `--auth-timeout`), so a
/// flood of new tokens cannot turn into a flood of API calls.
const REVIEWS_IN_FLIGHT: usize = 8;
/// The verb checked: every route of the API is a GET.
pub const VERB: &str = "get";

/// Who a token is, as the TokenReview said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// A request's fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one the API server does not accept: 401.
    Unauthenticated(String),
    /// Authenticated, not authorized: 403.
    Denied {
        user: String,
        groups: Vec<String>,
        reason: String,
    },
    /// The API server could not be asked: 503.
    Unavailable(String),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Unauthenticated(_) => "unauthenticated",
            Verdict::Denied { .. } => "denied",
            Verdict::Unavailable(_) => "unavailable",
        }
    }

    fn response(&self, path: &str) -> Response {
        match self {
            Verdict::Allowed => StatusCode::OK.into_response(),
            Verdict::Unauthenticated(why) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"crossover-agent\"")],
                format!("{why}\n"),
            )
                .into_response(),
            Verdict::Denied {
                user,
                groups,
                reason,
            } => (
                StatusCode::FORBIDDEN,
                format!(
                    "user {user:?} (groups: {}) may not {VERB} {path} on this agent{}: grant it \
                     nonResourceURLs [\"{path}\"] or [\"/api/v1/*\"] with verb {VERB} (docs/agent.md)\n",
                    groups.join(", "),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({reason})")
                    },
                ),
            )
                .into_response(),
            Verdict::Unavailable(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                format!("cannot check the bearer token: {why}\n"),
            )
                .into_response(),
        }
    }
}

/// Families' counters (docs/metrics.md).
#[derive(Default)]
struct Counts {
    /// Requests by verdict, in [`Verdict::label`]'s order.
    requests: [AtomicU64; 4],
    /// API calls by review (token, access) and outcome (answered, error).
    reviews: [[AtomicU64; 2]; 2],
    hits: [AtomicU64; 2],
    evictions: [AtomicU64; 2],
}

const REVIEWS: [&str; 2] = ["token", "access"];
const VERDICTS: [&str; 4] = ["allowed", "unauthenticated", "denied", "unavailable"];

/// A bounded map whose entries expire; full, the entry expiring first
/// makes room (an O(capacity) scan, only when full).
struct Expiring<K, V> {
    entries: HashMap<K, (Instant, V)>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Expiring<K, V> {
    fn new(capacity: usize) -> Self {
        Expiring {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((until, v)) if *until > now => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Whether an entry was evicted to make room.
    fn insert(&mut self, key: K, value: V, until: Instant) -> bool {
        let mut evicted = false;
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let now = Instant::now();
            self.entries.retain(|_, (t, _)| *t > now);
            if self.entries.len() >= self.capacity {
                let first = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| k.clone());
                if let Some(first) = first {
                    self.entries.remove(&first);
                    evicted = true;
                }
            }
        }
        self.entries.insert(key, (until, value));
        evicted
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

type TokenHash = [u8; 32];

/// A review's answer (`Ok(Err(why))`: a no), or why the API server could
/// not be asked.
type Asked<V> = std::result::Result<std::result::Result<V, String>, String>;

/// The checker the router's middleware asks.
pub struct Auth {
    client: kube::Client,
    /// Token -> who (or why not).
    identities: Mutex<Expiring<TokenHash, std::result::Result<Identity, String>>>,
    /// (token, route) -> allowed, and the denial's reason.
    decisions: Mutex<Expiring<(TokenHash, String), std::result::Result<(), String>>>,
    ttl: Duration,
    timeout: Duration,
    in_flight: tokio::sync::Semaphore,
    pub metrics: bool,
    counts: Counts,
    /// This agent's own, for [`Auth::until`]'s spread.
    salt: u64,
}

impl Auth {
    /// The checker `args` ask for, or `None` when auth is off. `kube` says
    /// whether the agent follows a cluster.
    pub async fn start(
        args: &AuthArgs,
        kube: bool,
        kubeconfig: Option<&std::path::PathBuf>,
    ) -> Result<Option<Auth>> {
        let on = match args.mode {
            Mode::Auto => kube,
            Mode::On => true,
            Mode::Off => false,
        };
        if !on {
            if args.auth_metrics {
                return Err(Error::Kube {
                    context: "--auth-metrics".into(),
                    reason: "needs --auth on (auth is off: --auth off, or a shape file)".into(),
                });
            }
            return Ok(None);
        }
        if args.auth_timeout.is_zero() || args.auth_cache_ttl.is_zero() {
            return Err(Error::Kube {
                context: "--auth-timeout, --auth-cache-ttl".into(),
                reason: "must be more than 0".into(),
            });
        }
        // Its own client, without kube-rs's retries: a review answers
        // within --auth-timeout or the request gets a 503.
        let client = crate::cluster::client(kubeconfig, false).await?;
        let entries = args.auth_cache_entries as usize;
        Ok(Some(Auth {
            client,
            identities: Mutex::new(Expiring::new(entries)),
            // A token may be asked about every route.
            decisions: Mutex::new(Expiring::new(entries * 2)),
            ttl: args.auth_cache_ttl,
            timeout: args.auth_timeout,
            in_flight: tokio::sync::Semaphore::new(REVIEWS_IN_FLIGHT),
            metrics: args.auth_metrics,
            counts: Counts::default(),
            salt: ring::rand::generate::<[u8; 8]>(&ring::rand::SystemRandom::new())
                .map(|r| u64::from_ne_bytes(r.expose()))
                .unwrap_or(u64::from(std::process::id())),
        }))
    }

    /// The start-up log's words for the mode in force.
    pub fn describe(auth: Option<&Auth>) -> String {
        match auth {
            None => "auth off: anyone reaching the port reads /api/v1 and /metrics".into(),
            Some(a) => format!(
                "auth on: /api/v1{} need a bearer token allowed to {VERB} their path \
                 (TokenReview, SubjectAccessReview; cached {:?})",
                if a.metrics { " and /metrics" } else { "" },
                a.ttl
            ),
        }
    }

    /// The verdict on a request for `path` with `headers`.
    pub async fn check(&self, headers: &HeaderMap, path: &str) -> Verdict {
        let verdict = self.verdict(headers, path).await;
        let i = VERDICTS
            .iter()
            .position(|v| *v == verdict.label())
            .expect("every verdict labelled");
        self.counts.requests[i].fetch_add(1, Relaxed);
        verdict
    }

    async fn verdict(&self, headers: &HeaderMap, path: &str) -> Verdict {
        let Some(token) = bearer(headers) else {
            return Verdict::Unauthenticated(
                "no bearer token: this agent needs `Authorization: Bearer TOKEN`, a token the \
                 Kubernetes API accepts (a service account's, `kubectl create token`)"
                    .into(),
            );
        };
        let hash = sha256(token);
        let identity = match self.identity(&hash, token).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(why)) => {
                return Verdict::Unauthenticated(format!(
                    "the bearer token is not accepted by the Kubernetes API: {why}"
                ));
            }
            Err(why) => return Verdict::Unavailable(why),
        };
        match self.decision(&hash, &identity, path).await {
            Ok(Ok(())) => Verdict::Allowed,
            Ok(Err(reason)) => Verdict::Denied {
                user: identity.user,
                groups: identity.groups,
                reason,
            },
            Err(why) => Verdict::Unavailable(why),
        }
    }

    /// When an answer about `token` expires: allowed ones after the TTL
    /// less up to a quarter, which differs from agent to agent (the salt),
    /// so a reader's token does not expire on every agent at the same
    /// instant and turn the next reading into two API calls per node at
    /// once.
    fn until(&self, allowed: bool, token: &TokenHash) -> Instant {
        if !allowed {
            return Instant::now() + self.ttl.min(NEGATIVE_TTL);
        }
        Instant::now() + lifetime(self.ttl, self.salt, token)
    }

    /// Who the token is (`Ok(Err)`: not a valid token), from the cache or
    /// a TokenReview; `Err` when the API server cannot say.
    async fn identity(&self, hash: &TokenHash, token: &str) -> Asked<Identity> {
        let review = || TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        self.remembered(0, &self.identities, hash, *hash, review, |answer| {
            let status = answer.status.unwrap_or_default();
            match (status.authenticated, status.user) {
                (Some(true), Some(user)) if user.username.is_some() => Ok(Identity {
                    user: user.username.unwrap_or_default(),
                    uid: user.uid,
                    groups: user.groups.unwrap_or_default(),
                    extra: user.extra,
                }),
                _ => Err(status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_owned())),
            }
        })
        .await
    }

    /// Whether `who` may get `path` (`Ok(Err(reason))`: denied), from the
    /// cache or a SubjectAccessReview.
    async fn decision(&self, hash: &TokenHash, who: &Identity, path: &str) -> Asked<()> {
        let review = || SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                uid: who.uid.clone(),
                groups: Some(who.groups.clone()),
                extra: who.extra.clone(),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(VERB.to_owned()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let key = (*hash, path.to_owned());
        self.remembered(1, &self.decisions, hash, key, review, |answer| {
            let status = answer.status.unwrap_or_default();
            if status.allowed && status.denied != Some(true) {
                Ok(())
            } else {
                Err(status.reason.unwrap_or_default())
            }
        })
        .await
    }

    /// The cached answer for `key` (about `token`), or review `which` (0
    /// token, 1 access) asked, read and cached (an error is not).
    async fn remembered<K, V, R>(
        &self,
        which: usize,
        cache: &Mutex<Expiring<K, std::result::Result<V, String>>>,
        token: &TokenHash,
        key: K,
        review: impl FnOnce() -> R,
        read: impl FnOnce(R) -> std::result::Result<V, String>,
    ) -> Asked<V>
    where
        K: std::hash::Hash + Eq + Clone,
        V: Clone,
        R: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let cached = lock(cache).get(&key, Instant::now());
        if let Some(known) = cached {
            self.counts.hits[which].fetch_add(1, Relaxed);
            return Ok(known);
        }
        let review = review();
        let answer = self
            .ask(which, async {
                Api::<R>::all(self.client.clone())
                    .create(&PostParams::default(), &review)
                    .await
            })
            .await?;
        let known = read(answer);
        let until = self.until(known.is_ok(), token);
        if lock(cache).insert(key, known.clone(), until) {
            self.counts.evictions[which].fetch_add(1, Relaxed);
        }
        Ok(known)
    }

    /// One review (`which`: 0 token, 1 access), bounded in time and in
    /// reviews at once, counted.
    async fn ask<T>(
        &self,
        which: usize,
        review: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> std::result::Result<T, String> {
        let what = ["TokenReview", "SubjectAccessReview"][which];
        let asked = tokio::time::timeout(self.timeout, async {
            let _permit = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
            review.await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the Kubernetes API did not answer within {:?}",
                self.timeout
            ))
        });
        let outcome = usize::from(asked.is_err());
        self.counts.reviews[which][outcome].fetch_add(1, Relaxed);
        asked.map_err(|e| format!("{what}: {e}"))
    }

    /// The auth families (docs/metrics.md).
    pub fn write_metrics(&self, out: &mut String, node: &str) {
        use crate::exposition::family;
        let mut f = family(
            out,
            "crossover_auth_requests_total",
            "counter",
            "Requests whose bearer token was checked, by result.",
        );
        for (i, result) in VERDICTS.iter().enumerate() {
            f.sample(
                &[("node", node), ("result", result)],
                self.counts.requests[i].load(Relaxed),
            );
        }
        let mut f = family(
            out,
            "crossover_auth_reviews_total",
            "counter",
            "TokenReviews and SubjectAccessReviews asked of the API server, by outcome.",
        );
        for (i, review) in REVIEWS.iter().enumerate() {
            for (j, outcome) in ["answered", "error"].iter().enumerate() {
                f.sample(
                    &[("node", node), ("review", review), ("outcome", outcome)],
                    self.counts.reviews[i][j].load(Relaxed),
                );
            }
        }
        let load = |counts: &[AtomicU64; 2]| counts.each_ref().map(|c| c.load(Relaxed));
        let sizes = [lock(&self.identities).len(), lock(&self.decisions).len()];
        let per_review = [
            (
                "crossover_auth_cache_hits_total",
                "counter",
                "Checks answered from the cache, without asking the API server.",
                load(&self.counts.hits),
            ),
            (
                "crossover_auth_cache_evictions_total",
                "counter",
                "Cached answers dropped before they expired because the cache was full.",
                load(&self.counts.evictions),
            ),
            (
                "crossover_auth_cache_entries",
                "gauge",
                "Answers cached (expired ones included until looked up or evicted).",
                sizes.map(|n| n as u64),
            ),
        ];
        for (name, kind, help, values) in per_review {
            let mut f = family(out, name, kind, help);
            for (review, n) in REVIEWS.iter().zip(values) {
                f.sample(&[("node", node), ("review", review)], n);
            }
        }
    }
}

/// How long an allowed answer about `token` is kept: `ttl` less up to a
/// quarter, by the token and this agent's `salt`.
fn lifetime(ttl: Duration, salt: u64, token: &TokenHash) -> Duration {
    let spread = u64::from_ne_bytes(token[..8].try_into().expect("8 bytes")) ^ salt;
    // At most a quarter of ttl: never below zero.
    ttl.saturating_sub(ttl / 4 * (spread % 1024) as u32 / 1024)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The token of `Authorization: Bearer TOKEN` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn sha256(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The middleware of protected routes: the request goes on only when its
/// token is allowed the route's path.
pub async fn require(
    Extract(state): Extract<std::sync::Arc<super::State>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &state.auth else {
        return next.run(request).await;
    };
    // Only routes reach here (route_layer), none with parameters: the
    // path is one of a fixed few, so (token, path) keys stay bounded.
    let path = request.uri().path().to_owned();
    match auth.check(request.headers(), &path).await {
        Verdict::Allowed => next.run(request).await,
        verdict => verdict.response(&path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn one_token_expires_at_different_times_on_different_agents() {
        let ttl = Duration::from_secs(120);
        let token = sha256("a reader's token");
        let lifetimes: std::collections::BTreeSet<Duration> = (0..16u64)
            .map(|agent| lifetime(ttl, agent.wrapping_mul(0x9e37_79b9_7f4a_7c15), &token))
            .collect();
        assert!(lifetimes.len() > 8, "{lifetimes:?}");
        assert!(lifetimes.iter().all(|l| *l > ttl * 3 / 4 && *l <= ttl));
    }

    #[test]
    fn the_cache_is_bounded_and_expires() {
        let now = Instant::now();
        let mut cache = Expiring::new(2);
        assert!(!cache.insert(1, "a", now + Duration::from_secs(10)));
        assert!(!cache.insert(2, "b", now + Duration::from_secs(20)));
        // Full: the entry expiring first makes room.
        assert!(cache.insert(3, "c", now + Duration::from_secs(30)));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&1, now), None);
        assert_eq!(cache.get(&2, now), Some("b"));
        // Expired entries are not served, and go when looked up.
        assert_eq!(cache.get(&2, now + Duration::from_secs(21)), None);
        assert_eq!(cache.len(), 1);
    }
}
