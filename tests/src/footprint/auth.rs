//! What checking bearer tokens costs the API server: the release agent
//! with `--auth on` against the fake API server (in the sink's namespace,
//! on node 1's underlay address), read by the real `crossover loss` with a
//! reader's token, reading after reading; the TokenReviews and
//! SubjectAccessReviews the server answered, counted at the server.
use std::{fs, path::Path, process::Command, time::Duration};

use super::{
    agent::{Agent, LISTEN},
    topology::{Lab, underlay},
};
use crate::{
    apiserver::{FakeApiServer, RequestRecord, Rule, User},
    netns::in_netns,
};

/// One run: the agent's `--auth-cache-ttl`, and what the readings cost.
pub struct AuthCost {
    pub ttl: &'static str,
    pub readings: usize,
    /// Requests the readers sent the agent.
    pub requests: u64,
    pub token_reviews: usize,
    pub access_reviews: usize,
}

impl AuthCost {
    pub fn per_reading(&self) -> f64 {
        (self.token_reviews + self.access_reviews) as f64 / self.readings as f64
    }
}

fn created(requests: &[RequestRecord], plural: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.verb == "create" && r.path.ends_with(plural))
        .count()
}

/// `readings` readings of one agent whose cache keeps answers `ttl`
/// (`1ms`: no cache, in effect), each a `crossover loss` process, as an
/// SRE or a script polling would run it.
pub fn measure(binary: &Path, ttl: &'static str, readings: usize) -> AuthCost {
    let lab = Lab::new(2);
    let listener = in_netns(&lab.sink.name, || {
        std::net::TcpListener::bind((underlay(1), 0)).expect("a port on the sink")
    });
    let server = FakeApiServer::start_on(listener).expect("the fake API server");
    server.add_token("reader-token", User::new("reader"));
    server.allow(Rule::urls(&["/api/v1/*"], &["get"]).for_user("reader"));
    // The agent asks with the admin's kubeconfig, the reader sends its own.
    let agent_kubeconfig = lab.dir.0.join("agent.kubeconfig");
    server.write_kubeconfig(&agent_kubeconfig).unwrap();
    let reader_kubeconfig = lab.dir.0.join("reader.kubeconfig");
    fs::write(
        &reader_kubeconfig,
        server.kubeconfig_with_token("reader-token"),
    )
    .unwrap();
    let args: Vec<String> = [
        "agent",
        "--config",
        &lab.shape.display().to_string(),
        "--iface",
        "eth0=underlay",
        "--listen",
        LISTEN,
        "--probe-rate",
        "0",
        "--auth",
        "on",
        "--kubeconfig",
        &agent_kubeconfig.display().to_string(),
        "--auth-cache-ttl",
        ttl,
    ]
    .map(String::from)
    .into();
    let agent = Agent::start(&lab, binary, &args);
    agent.wait_ready(&lab.agent.name);
    // A window of at least two ticks to read.
    std::thread::sleep(Duration::from_secs(3));
    let before = server.requests();
    let mut requests = 0;
    for _ in 0..readings {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.agent.name])
            .arg(binary)
            .args(["loss", "-o", "json", "--window", "2s", "--agent"])
            .arg(format!("http://{LISTEN}"))
            .arg("--kubeconfig")
            .arg(&reader_kubeconfig)
            .output()
            .expect("crossover loss runs");
        let reading: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "crossover loss printed no JSON ({e}): {}; agent: {}",
                String::from_utf8_lossy(&out.stderr),
                agent.log_tail()
            )
        });
        assert_eq!(
            reading["failed"],
            serde_json::json!([]),
            "the agent refused or failed the reading"
        );
        requests += reading["requests"].as_u64().unwrap_or(0);
    }
    let after = server.requests();
    let asked = |plural| created(&after, plural) - created(&before, plural);
    AuthCost {
        ttl,
        readings,
        requests,
        token_reviews: asked("tokenreviews"),
        access_reviews: asked("subjectaccessreviews"),
    }
}
