//! Many clients dumping the flow table at once, as a careless dashboard or
//! a script in a loop would: each pages through `/api/v1/flows` (10,000
//! entries a page, Retry-After honoured on a 429) until its dump is whole,
//! while another client times `/healthz` and `/api/v1/loss` every 100 ms.
//! A binary without paging answers the whole table in one page.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use super::agent::LISTEN;

#[derive(Debug)]
pub struct DumpStorm {
    pub clients: usize,
    /// Dumps that reached the table's end.
    pub whole: usize,
    pub pages: u64,
    pub too_busy: u64,
    pub failed: u64,
    pub took: Duration,
    /// Flows the slowest client's dump held.
    pub flows_per_dump: u64,
    /// (max, 99th percentile) of each probed endpoint.
    pub healthz_ms: (f64, f64),
    pub loss_ms: (f64, f64),
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    flows: Vec<serde::de::IgnoredAny>,
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build(),
    )
}

/// `clients` whole dumps at once from namespace `ns`, each bounded by
/// `deadline`.
pub fn storm(ns: &str, clients: usize, deadline: Duration) -> DumpStorm {
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(AtomicU64::new(0));
    let too_busy = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let prober = {
        let (ns, done) = (ns.to_string(), done.clone());
        thread::spawn(move || {
            let _ns = observer::netns::enter(&ns).expect("enter the agent's namespace");
            let agent = client(Duration::from_secs(10));
            let (mut healthz, mut loss) = (Vec::new(), Vec::new());
            while !done.load(Ordering::Relaxed) {
                for (path, out) in [("/healthz", &mut healthz), ("/api/v1/loss", &mut loss)] {
                    let t = Instant::now();
                    let answered = agent
                        .get(&format!("http://{LISTEN}{path}"))
                        .call()
                        .map(|mut r| r.body_mut().read_to_string().is_ok())
                        .unwrap_or(false);
                    // An unanswered probe counts as its timeout.
                    out.push(if answered {
                        t.elapsed()
                    } else {
                        Duration::from_secs(10)
                    });
                }
                thread::sleep(Duration::from_millis(100));
            }
            (healthz, loss)
        })
    };
    let dumpers: Vec<_> = (0..clients)
        .map(|_| {
            let ns = ns.to_string();
            let (pages, too_busy, failed) = (pages.clone(), too_busy.clone(), failed.clone());
            thread::spawn(move || {
                let _ns = observer::netns::enter(&ns).expect("enter the agent's namespace");
                let agent = client(Duration::from_secs(60));
                let mut next: Option<String> = None;
                let mut flows = 0u64;
                while start.elapsed() < deadline {
                    let url = match &next {
                        None => format!("http://{LISTEN}/api/v1/flows?limit=10000"),
                        Some(t) => format!("http://{LISTEN}/api/v1/flows?limit=10000&continue={t}"),
                    };
                    let Ok(mut response) = agent.get(&url).call() else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_secs(1));
                        continue;
                    };
                    match response.status().as_u16() {
                        200 => {}
                        429 => {
                            too_busy.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_secs(1));
                            continue;
                        }
                    }
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(1 << 30)
                        .read_to_string()
                        .unwrap_or_default();
                    let Ok(page) = serde_json::from_str::<Page>(&body) else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    pages.fetch_add(1, Ordering::Relaxed);
                    flows += page.flows.len() as u64;
                    match page.next {
                        Some(t) => next = Some(t),
                        None => return Some(flows),
                    }
                }
                None
            })
        })
        .collect();
    let dumps: Vec<Option<u64>> = dumpers.into_iter().map(|d| d.join().unwrap()).collect();
    let took = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let (healthz, loss) = prober.join().unwrap();
    let spread = |mut v: Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match v.last() {
            None => (0.0, 0.0),
            Some(&max) => (ms(max), ms(v[(v.len() * 99 / 100).min(v.len() - 1)])),
        }
    };
    DumpStorm {
        clients,
        whole: dumps.iter().flatten().count(),
        pages: pages.load(Ordering::Relaxed),
        too_busy: too_busy.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        took,
        flows_per_dump: dumps.iter().flatten().copied().max().unwrap_or(0),
        healthz_ms: spread(healthz),
        loss_ms: spread(loss),
    }
}
