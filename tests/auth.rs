//! Who may read an agent: agents in Kubernetes mode (a lab whose API is
//! the fake server) check every `/api/v1` request's bearer token with a
//! TokenReview and a SubjectAccessReview, `/metrics` too with
//! `--auth-metrics`; answers are cached; an API server that cannot answer
//! makes a 503, not a hang. `crossover loss` sends its kubeconfig's token
//! and reports a refusal as one. Needs root (namespaces, programs in the
//! kernel).
use std::time::{Duration, Instant};

use crossover_tests::{
    apiserver::{ADMIN_TOKEN, RequestRecord, Rule, User},
    kubelab::{AGENT_PORT, CROSSOVER, KubeLab},
    lab::{LabSpec, plan},
    netns::{http_get, http_get_as, unique},
    prometheus::check_documented,
    require_root,
};
use serde_json::Value;

/// The driver's ServiceAccount, as its token authenticates.
fn reader() -> User {
    User::service_account("crossover", "crossover-migrate")
}

fn reviews(requests: &[RequestRecord], kind: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.verb == "create" && r.path.ends_with(kind))
        .count()
}

/// The value of the series of `family` whose labels contain `labels`.
fn sample(metrics: &str, family: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {family} with {labels} in:\n{metrics}"))
}

/// `crossover loss` from the control-plane node against every agent,
/// with `kubeconfig` (or none, and no ~/.kube either): exit code, stdout.
fn loss(kl: &KubeLab, kubeconfig: Option<&std::path::Path>) -> (Option<i32>, String, String) {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        &kl.lab.node_ns("control-plane"),
        CROSSOVER,
        "loss",
    ])
    .env_remove("KUBECONFIG")
    .env("HOME", &kl.dir);
    if let Some(k) = kubeconfig {
        c.arg("--kubeconfig").arg(k);
    }
    for url in kl.agent_urls() {
        c.args(["--agent", &url]);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agents_let_in_only_tokens_the_api_server_allows() {
    require_root();
    let mut kl = KubeLab::up_with_objects(&LabSpec {
        name: unique("au"),
        nodes: 2,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    });
    let quick = ["--probe-rate", "0", "--auth-timeout", "1s"];
    kl.start_agent("control-plane", &quick);
    kl.start_agent("worker-1", &[&quick[..], &["--auth-metrics"]].concat());
    kl.wait_agents_ready();
    let cp = kl.lab.node_ns("control-plane");
    let urls = kl.agent_urls();
    let get = |j: usize, path: &str, token: Option<&str>| {
        http_get_as(&cp, &format!("{}{path}", urls[j]), token)
    };

    // Listening on the node's address only, and saying so.
    let log = kl.agent_log("control-plane");
    let addr = plan::underlay_addr(0);
    assert!(
        log.contains(&format!(
            "on {addr}:{AGENT_PORT} (this node's underlay address)"
        )),
        "{log}"
    );
    assert!(
        log.contains("auth on: /api/v1 need a bearer token"),
        "{log}"
    );
    assert!(
        kl.agent_log("worker-1")
            .contains("auth on: /api/v1 and /metrics need"),
        "{}",
        kl.agent_log("worker-1")
    );
    let node_ns = kl.lab.node_ns("control-plane");
    assert_eq!(
        http_get(&node_ns, &format!("http://127.0.0.1:{AGENT_PORT}/healthz")).0,
        0,
        "the agent answers on loopback: it listens on every address"
    );

    // No token, a token the API server does not know: 401, saying which.
    let (status, body) = get(0, "/api/v1/status", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no bearer token"), "{body}");
    let (status, body) = get(0, "/api/v1/status", Some("forged"));
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("not accepted by the Kubernetes API"),
        "{body}"
    );

    // Known but not allowed: 403 naming the user and the path.
    kl.server.add_token("bob-token", User::new("bob"));
    let (status, body) = get(0, "/api/v1/loss", Some("bob-token"));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("user \"bob\"") && body.contains("get /api/v1/loss"),
        "{body}"
    );

    // Allowed as the shipped ClusterRole crossover-reader allows: 200.
    kl.server.add_token("reader-token", reader());
    kl.server
        .allow(Rule::urls(&["/api/v1/*"], &["get"]).for_user(&reader().name));
    let (status, body) = get(0, "/api/v1/loss", Some("reader-token"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["node"],
        "control-plane"
    );

    // Probes stay open; /metrics is open by default, checked with the flag.
    assert_eq!(get(0, "/healthz", None).0, 200);
    assert_eq!(get(0, "/readyz", None).0, 200);
    assert_eq!(get(0, "/metrics", None).0, 200);
    assert_eq!(get(1, "/metrics", None).0, 401);
    let (status, body) = get(1, "/metrics", Some("reader-token"));
    assert_eq!(status, 403, "/api/v1/* does not grant /metrics: {body}");
    let (status, metrics) = get(1, "/metrics", Some(ADMIN_TOKEN));
    assert_eq!(status, 200);
    check_documented(&metrics);

    // The cache: a reader polling one agent many times costs one
    // TokenReview, and one SubjectAccessReview per path.
    kl.server.add_token("poll-token", reader());
    let before = kl.server.requests();
    let paths = ["/api/v1/status", "/api/v1/loss", "/api/v1/peers"];
    for _ in 0..20 {
        for path in paths {
            assert_eq!(get(0, path, Some("poll-token")).0, 200, "{path}");
        }
    }
    let after = kl.server.requests();
    let asked = |kind| reviews(&after, kind) - reviews(&before, kind);
    assert_eq!(asked("tokenreviews"), 1, "60 requests, one token");
    assert_eq!(asked("subjectaccessreviews"), paths.len(), "one per path");
    let (_, metrics) = get(0, "/metrics", None);
    check_documented(&metrics);
    assert!(
        sample(
            &metrics,
            "crossover_auth_cache_hits_total",
            "review=\"token\""
        ) >= 59.0
    );
    assert!(
        sample(
            &metrics,
            "crossover_auth_requests_total",
            "result=\"denied\""
        ) >= 1.0
    );
    assert!(
        sample(
            &metrics,
            "crossover_auth_requests_total",
            "result=\"unauthenticated\""
        ) >= 2.0
    );

    // `crossover loss` with the reader's token reads every agent; with no
    // token or a forbidden one it says the agents refused, and why.
    let kubeconfig = |name: &str, token: &str| {
        let path = kl.dir.join(name);
        std::fs::write(&path, kl.server.kubeconfig_with_token(token)).unwrap();
        path
    };
    let (code, out, err) = loss(&kl, Some(&kubeconfig("reader.kubeconfig", "reader-token")));
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains("refused") && !out.contains("failed"), "{out}");
    let (code, out, err) = loss(&kl, None);
    assert_eq!(code, Some(2), "{out}\n{err}");
    for url in kl.agent_urls() {
        assert!(
            out.contains(&format!("refused: {url} does not let this reader in")),
            "{out}"
        );
    }
    assert!(
        out.contains("401") && out.contains("sent no token"),
        "{out}"
    );
    assert!(!out.contains("did not answer"), "{out}");
    let (code, out, _) = loss(&kl, Some(&kubeconfig("bob.kubeconfig", "bob-token")));
    assert_eq!(code, Some(2));
    assert!(out.contains("403") && out.contains("user \"bob\""), "{out}");

    // An API server too slow to answer: 503 within --auth-timeout (1 s),
    // not a hang; then one that is gone: 503 too, while a token already
    // cached keeps working.
    kl.server.add_token("late-token", reader());
    kl.server.stall_reviews(Some(Duration::from_secs(30)));
    let asked_at = Instant::now();
    let (status, body) = get(0, "/api/v1/status", Some("late-token"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("did not answer within 1s"), "{body}");
    assert!(
        asked_at.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked_at.elapsed()
    );
    kl.server.stop();
    let (status, body) = get(0, "/api/v1/status", Some("late-token"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot check the bearer token"), "{body}");
    assert_eq!(get(0, "/api/v1/status", Some("poll-token")).0, 200);
    let (_, metrics) = get(0, "/metrics", None);
    assert!(
        sample(
            &metrics,
            "crossover_auth_requests_total",
            "result=\"unavailable\""
        ) >= 2.0
    );
    assert!(
        sample(
            &metrics,
            "crossover_auth_reviews_total",
            "review=\"token\",outcome=\"error\""
        ) >= 2.0
    );
}
