//! The other end of a probe: UDP echo and TCP accept on one port. The agent
//! runs one on the host network, so a node answers on its `flannel.1` and
//! its `cilium_host` address alike (over each overlay); `crossover probe`
//! runs one alone, in pods that get their address from the node's CNI.
//!
//! It answers anyone, so it is careful with what it is sent: datagrams that
//! are not probe requests are counted by reason and dropped (replies too:
//! two responders never bounce a datagram between them), TCP connections
//! are capped (over the cap they are closed at once and counted), and each
//! one lives only as long as it talks, within a byte budget.
use std::{
    future::Future,
    io::ErrorKind,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use super::wire::{self, WireError};
use crate::{Error, Result};

pub const DEFAULT_PORT: u16 = 9191;

#[derive(Clone, Debug)]
pub struct ResponderConfig {
    pub listen: SocketAddr,
    /// TCP connections served at once.
    pub max_connections: usize,
    /// A TCP connection silent this long is closed.
    pub idle: Duration,
    /// Bytes echoed on one TCP connection before it is closed.
    pub max_echo_bytes: u64,
}

impl Default for ResponderConfig {
    fn default() -> Self {
        ResponderConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            max_connections: 1024,
            idle: Duration::from_secs(5),
            max_echo_bytes: 1 << 20,
        }
    }
}

/// What a responder did, for its metrics.
#[derive(Default)]
pub struct ResponderCounters {
    udp_replies: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_over_cap: AtomicU64,
    /// Indexed like [`WireError::LABELS`].
    refused: [AtomicU64; WireError::LABELS.len()],
    errors: AtomicU64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResponderTotals {
    pub udp_replies: u64,
    pub tcp_accepted: u64,
    /// Connections closed unserved because `max_connections` were open.
    pub tcp_over_cap: u64,
    /// Datagrams that were not probe requests, by reason (every reason).
    pub refused: Vec<(&'static str, u64)>,
    /// Receive, send and accept errors.
    pub errors: u64,
}

impl ResponderCounters {
    pub fn totals(&self) -> ResponderTotals {
        ResponderTotals {
            udp_replies: self.udp_replies.load(Relaxed),
            tcp_accepted: self.tcp_accepted.load(Relaxed),
            tcp_over_cap: self.tcp_over_cap.load(Relaxed),
            refused: WireError::LABELS
                .iter()
                .zip(&self.refused)
                .map(|(label, n)| (*label, n.load(Relaxed)))
                .collect(),
            errors: self.errors.load(Relaxed),
        }
    }

    fn refuse(&self, err: WireError) {
        let at = WireError::LABELS
            .iter()
            .position(|l| *l == err.metric_label())
            .expect("every reason has a label");
        self.refused[at].fetch_add(1, Relaxed);
    }
}

pub struct Responder {
    udp: UdpSocket,
    tcp: TcpListener,
    config: ResponderConfig,
    counters: Arc<ResponderCounters>,
}

impl Responder {
    /// Binds TCP and UDP on `config.listen`. Port 0 picks one free for both.
    pub async fn bind(config: ResponderConfig) -> Result<Responder> {
        let what = |proto: &str, addr: SocketAddr| format!("probe responder: {proto} {addr}");
        // With port 0, TCP's pick may be taken for UDP: a few tries.
        let attempts = if config.listen.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let tcp = TcpListener::bind(config.listen)
                .await
                .map_err(|e| Error::io(what("TCP", config.listen), e))?;
            let addr = tcp
                .local_addr()
                .map_err(|e| Error::io(what("TCP", config.listen), e))?;
            match UdpSocket::bind(addr).await {
                Ok(udp) => {
                    return Ok(Responder {
                        udp,
                        tcp,
                        config,
                        counters: Arc::default(),
                    });
                }
                Err(e) => last = Some(Error::io(what("UDP", addr), e)),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.tcp
            .local_addr()
            .map_err(|e| Error::io("probe responder address", e))
    }

    pub fn counters(&self) -> Arc<ResponderCounters> {
        self.counters.clone()
    }

    /// Answers until `shutdown` completes. TCP connections being served
    /// then end on their own, within `idle`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = udp_echo(&self.udp, &self.counters) => {}
            _ = tcp_accept(&self.tcp, &self.config, &self.counters) => {}
        }
    }
}

async fn udp_echo(udp: &UdpSocket, counters: &ResponderCounters) {
    // The largest datagram, so padding is echoed whole, never cut.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                // ICMP errors of earlier replies surface here; go on.
                counters.errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        if let Err(err) = wire::reply_in_place(&mut buf[..len]) {
            counters.refuse(err);
            continue;
        }
        match udp.send_to(&buf[..len], from).await {
            Ok(_) => counters.udp_replies.fetch_add(1, Relaxed),
            Err(_) => counters.errors.fetch_add(1, Relaxed),
        };
    }
}

async fn tcp_accept(
    tcp: &TcpListener,
    config: &ResponderConfig,
    counters: &Arc<ResponderCounters>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let stream = match tcp.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                counters.errors.fetch_add(1, Relaxed);
                // Out of descriptors: give the open ones time to close
                // rather than spin on the error.
                if !matches!(e.kind(), ErrorKind::ConnectionAborted) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        counters.tcp_accepted.fetch_add(1, Relaxed);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.tcp_over_cap.fetch_add(1, Relaxed);
            continue;
        };
        let (idle, budget) = (config.idle, config.max_echo_bytes);
        tokio::spawn(async move {
            echo(stream, idle, budget).await;
            drop(slot);
        });
    }
}

/// Echoes until the peer closes (a probe's RST, usually at once), goes
/// quiet for `idle`, or has been echoed `budget` bytes.
async fn echo(mut stream: TcpStream, idle: Duration, budget: u64) {
    let mut buf = [0u8; 4096];
    let mut echoed = 0u64;
    while echoed < budget {
        let n = match tokio::time::timeout(idle, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
        echoed += n as u64;
    }
}
