//! Traffic between pods or nodes of a lab, as the migration's users make
//! it: short TCP connections (a request each), long-lived TCP streams, UDP
//! streams and ICMP echo. Every generator is bounded in count and time, and
//! only ever addresses the lab: its endpoints come from the lab's state.
//!
//! Each run has a server in the destination's namespace and a client in the
//! source's, both threads of this process, so its report is exact.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::Lab;

pub const MAX_COUNT: u64 = 1_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// One end of a traffic run: a pod, or a node's host network.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub label: String,
    pub netns: String,
    pub addr: Ipv4Addr,
}

impl Lab {
    /// `node/pod` for a pod, `node` for the node's host network (its
    /// InternalIP).
    pub fn endpoint(&self, id: &str) -> Result<Endpoint> {
        if id.contains('/') {
            let pod = self.pod(id)?;
            return Ok(Endpoint {
                label: id.into(),
                netns: pod.netns.clone(),
                addr: pod.addr,
            });
        }
        let j = self.state().node_index(id)?;
        Ok(Endpoint {
            label: id.into(),
            netns: self.node_ns(id),
            addr: self.state().underlay_addr(j),
        })
    }
}

/// Ports for servers, distinct across concurrent runs of this process.
fn next_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    20000 + (std::process::id() % 1000) as u16 * 20 + NEXT.fetch_add(1, Ordering::Relaxed) % 20
}

fn bound(count: u64, duration: Duration) -> Result<()> {
    if count > MAX_COUNT {
        bail!("count {count} is over the generators' bound of {MAX_COUNT}");
    }
    if duration > MAX_DURATION {
        bail!("{duration:?} is over the generators' bound of {MAX_DURATION:?}");
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns`.
pub(super) fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        let _guard = observer::netns::enter(&ns).with_context(|| format!("entering {ns}"))?;
        f()
    })
}

pub(super) fn join<T>(handle: thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?
}

/// Starts a server in `to`'s namespace: `bind` on `port` (a fresh one from
/// [`next_port`] unless the protocol fixes it), then, once bound (so no
/// client races it), `serve`.
pub(super) fn start_server<S, T: Send + 'static>(
    to: &Endpoint,
    port: u16,
    bind: impl FnOnce(SocketAddr) -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S) -> Result<T> + Send + 'static,
) -> Result<(SocketAddr, thread::JoinHandle<Result<T>>)> {
    let addr = SocketAddr::from((to.addr, port));
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = spawn_in(&to.netns, move || match bind(addr) {
        Ok(socket) => {
            let _ = ready_tx.send(Ok(()));
            serve(socket)
        }
        Err(e) => {
            let _ = ready_tx.send(Err(e.to_string()));
            Err(e.into())
        }
    });
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok((addr, handle)),
        Ok(Err(e)) => bail!("server on {} ({addr}): {e}", to.label),
        Err(_) => bail!("server on {} ({addr}) did not start", to.label),
    }
}

/// Paces `rate` units (packets, bytes) per second from its creation.
pub struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    pub fn new(rate: u64) -> Self {
        Pacer {
            start: Instant::now(),
            rate: rate as f64,
        }
    }

    /// Waits until `done` units are due.
    pub fn wait(&self, done: u64) {
        while (self.rate * self.start.elapsed().as_secs_f64()) < done as f64 {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TcpReport {
    /// The server's port: with the server's address, it names the run.
    pub port: u16,
    pub attempted: u64,
    /// Handshakes completed and a request answered.
    pub answered: u64,
    /// Connect timed out: SYN or SYN-ACK lost.
    pub timed_out: u64,
    pub refused: u64,
    /// The server's view of the client, per connection: after SNAT this is
    /// the node's overlay address, not the pod's.
    pub seen_as: Vec<SocketAddr>,
}

/// `count` short connections from `from` to `to`, one request and answer
/// each, `timeout` per connect.
pub fn tcp_connections(
    from: &Endpoint,
    to: &Endpoint,
    count: u64,
    timeout: Duration,
) -> Result<TcpReport> {
    tcp_connections_to_port(from, to, next_port(), count, timeout)
}

/// [`tcp_connections`] to a server on `port` (one a datapath treats
/// specially, such as the agents' API port).
pub fn tcp_connections_to_port(
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    count: u64,
    timeout: Duration,
) -> Result<TcpReport> {
    bound(count, timeout * count.min(u32::MAX as u64) as u32)?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let (target, server) = start_server(to, port, TcpListener::bind, move |listener| {
        listener.set_nonblocking(true)?;
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut request = [0u8; 64];
                    if conn.read_exact(&mut request).is_ok() {
                        let _ = conn.write_all(&request);
                    }
                    seen.push(peer);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(seen)
    })?;
    let client = spawn_in(&from.netns, move || {
        let mut report = TcpReport::default();
        for _ in 0..count {
            report.attempted += 1;
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(mut conn) => {
                    conn.set_read_timeout(Some(timeout))?;
                    let request = [0x5a; 64];
                    let mut answer = [0u8; 64];
                    if conn.write_all(&request).is_ok() && conn.read_exact(&mut answer).is_ok() {
                        report.answered += 1;
                    }
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => report.refused += 1,
                Err(_) => report.timed_out += 1,
            }
        }
        Ok(report)
    });
    let report = join(client);
    done.store(true, Ordering::Relaxed);
    let seen = join(server)?;
    let mut report = report?;
    report.seen_as = seen;
    report.port = target.port();
    Ok(report)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamReport {
    pub connected: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One long-lived connection writing for `duration`, at most `rate` bytes
/// per second.
pub fn tcp_stream(
    from: &Endpoint,
    to: &Endpoint,
    duration: Duration,
    rate: u64,
) -> Result<StreamReport> {
    bound(0, duration)?;
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let (target, server) = start_server(to, next_port(), TcpListener::bind, move |listener| {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(duration + Duration::from_secs(5)))?;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => counted.fetch_add(n as u64, Ordering::Relaxed),
            };
        }
    })?;
    let client = spawn_in(&from.netns, move || {
        let mut report = StreamReport::default();
        let Ok(mut conn) = TcpStream::connect_timeout(&target, Duration::from_secs(3)) else {
            return Ok(report);
        };
        report.connected = true;
        conn.set_write_timeout(Some(Duration::from_secs(3)))?;
        let chunk = vec![0xa5u8; 1400];
        let pacer = Pacer::new(rate);
        let start = Instant::now();
        while start.elapsed() < duration {
            pacer.wait(report.bytes_sent);
            match conn.write(&chunk) {
                Ok(n) => report.bytes_sent += n as u64,
                Err(_) => break,
            }
        }
        Ok(report)
    });
    let mut report = join(client)?;
    let _ = join(server);
    report.bytes_received = received.load(Ordering::Relaxed);
    Ok(report)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct UdpReport {
    pub port: u16,
    pub sent: u64,
    pub received: u64,
}

/// `count` datagrams of `size` bytes from `from` to `to`, paced at `pps`.
pub fn udp_stream(
    from: &Endpoint,
    to: &Endpoint,
    count: u64,
    pps: u64,
    size: usize,
) -> Result<UdpReport> {
    if pps == 0 {
        bail!("a UDP stream needs a rate above 0 packets per second");
    }
    let duration = Duration::from_secs_f64(count as f64 / pps as f64);
    bound(count, duration)?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let (target, server) = start_server(to, next_port(), UdpSocket::bind, move |socket| {
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut buf = [0u8; 2048];
        let mut received = 0;
        let mut quiet_since: Option<Instant> = None;
        loop {
            match socket.recv(&mut buf) {
                Ok(_) => {
                    received += 1;
                    quiet_since = None;
                }
                Err(_) if stop.load(Ordering::Relaxed) => {
                    // Stragglers get half a second after the client ends.
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(500) {
                        return Ok(received);
                    }
                }
                Err(_) => {}
            }
        }
    })?;
    let client = spawn_in(&from.netns, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let payload = vec![0x3cu8; size.clamp(1, 1400)];
        let pacer = Pacer::new(pps);
        let mut sent = 0;
        while sent < count {
            pacer.wait(sent);
            // A full socket buffer is the sender's own limit, not loss:
            // retry the same datagram.
            match socket.send_to(&payload, target) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    });
    let sent = join(client);
    done.store(true, Ordering::Relaxed);
    let received = join(server)?;
    Ok(UdpReport {
        port: target.port(),
        sent: sent?,
        received,
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PingReport {
    pub sent: u64,
    pub received: u64,
}

/// `count` ICMP echo requests with the system's `ping`, `interval` apart.
pub fn ping(from: &Endpoint, to: &Endpoint, count: u64, interval: Duration) -> Result<PingReport> {
    bound(count, interval * count.min(u32::MAX as u64) as u32)?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &from.netns, "ping", "-q", "-n", "-W", "1"])
        .args(["-c", &count.to_string()])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64().max(0.002))])
        .arg(to.addr.to_string())
        .output()
        .context("starting ping")?;
    // ping exits 1 when replies are missing; its summary still counts.
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| {
            format!(
                "no ping summary from {} to {}: {}",
                from.label,
                to.label,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let [sent, received, ..] = numbers[..] else {
        bail!("unexpected ping summary: {summary}");
    };
    Ok(PingReport { sent, received })
}

/// A crafted tunnel run between two nodes (the kernel here has neither a
/// Geneve nor an ipip module): the inner addresses, the sending node's
/// underlay address, the receiving node as an endpoint at its underlay
/// address, and how long its receiver waits.
pub(super) struct Crafted {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub outer_src: std::net::Ipv4Addr,
    pub to_node: Endpoint,
    pub deadline: Duration,
}

impl Crafted {
    /// `count` packets from node `from` to node `to`, inner addresses
    /// `inner_src` to `inner_dst` (as [`Lab::endpoint`] names them), `pps`
    /// a second; `what` names the run in errors.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan(
        lab: &super::Lab,
        what: &str,
        from: &str,
        to: &str,
        inner_src: &str,
        inner_dst: &str,
        count: u64,
        pps: u64,
    ) -> Result<Self> {
        if count > MAX_COUNT || pps == 0 {
            bail!("{what}: count {count} must be at most {MAX_COUNT} and pps above 0");
        }
        let j = lab.state().node_index(from)?;
        let k = lab.state().node_index(to)?;
        Ok(Crafted {
            src: lab.endpoint(inner_src)?.addr,
            dst: lab.endpoint(inner_dst)?.addr,
            outer_src: lab.state().underlay_addr(j),
            to_node: Endpoint {
                label: to.into(),
                netns: lab.node_ns(to),
                addr: lab.state().underlay_addr(k),
            },
            deadline: Duration::from_secs_f64(count as f64 / pps as f64) + Duration::from_secs(1),
        })
    }
}
