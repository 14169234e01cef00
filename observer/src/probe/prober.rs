//! Active probes towards peers, so a node pair with no traffic of its own
//! is measured too. What to probe is a [`Schedule`]: steady targets, each
//! with a UDP echo and a TCP handshake at `rate` per second each, on
//! schedules of their own, jittered so that the agents of a cluster (and
//! the targets of one agent) do not fire together; and a sweep, whose
//! targets are visited one after the other at a pace of their own, each
//! visit one probe per signal of the sweep (the probe mesh's rotation,
//! [`super::mesh`]).
//!
//! UDP: one unconnected socket for every target; a reply is matched by the
//! prober's id and the sequence number, not by its source address, so a
//! host that answers from another of its addresses still counts. A probe
//! is lost when no reply came within `timeout`; a reply after that is
//! counted as late (the probe stays lost) until `late_horizon`, then as a
//! stray. TCP: a connect per probe, its handshake timed; refused, reset,
//! unreachable and timed out are losses by reason. The connection is then
//! closed with an RST (zero linger), so thousands of probes a second leave
//! no TIME_WAIT behind on either side.
//!
//! Large probes ([`Probe::Mtu`]) are UDP echoes as large as the route to
//! the target allows (its MTU, learnt exceptions included, read through
//! one connected socket and kept [`ROUTE_MTU_TTL`], [`route`]), DF set and sent whatever
//! the kernel's path MTU cache says (`IP_PMTUDISC_PROBE`), so a hop that
//! drops them silently loses them. An ICMP "fragmentation needed" in
//! answer is PMTU discovery working: counted on the series with its
//! next-hop MTU, the probe refused (not lost), and the next ones sized to
//! the route's new MTU. Lost while the target's small echo was answered
//! within [`SMALL_FRESH`], a large probe starts the MTU [`ladder`].
//!
//! The engine is one task: UDP replies, TCP handshakes and timers all wake
//! it, and nothing wakes it for a probe already answered (a probe's
//! timeout is a wake-up only while it waits), so its wake-ups follow the
//! packets, not the probes in flight.
//!
//! Sockets belong to the network namespace of the thread that creates
//! them: the prober's thread is in the namespace of the thread that
//! spawns it (the agent's, on the host network).
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    future::Future,
    io,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};
use observer_ebpf::{Net, Overlay};
use serde::Serialize;
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::{oneshot, watch},
};

use super::{
    stats::{LossReason, Probe, ProbeStats, Recorder, SeriesKey},
    wire::{self, Header, Kind},
};
use crate::{Error, Result};

mod icmp;
pub mod ladder;
mod route;

pub use route::ROUTE_MTU_TTL;

/// One address of one peer to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Target {
    pub peer_node: String,
    /// The overlay the probe crosses: for a node's `flannel.1` address
    /// and for legacy pods, the legacy one.
    #[serde(serialize_with = "label::overlay")]
    pub overlay: Overlay,
    /// What answers: the peer's host network, or a pod of either network.
    #[serde(serialize_with = "label::net")]
    pub dst_net: Net,
    pub addr: Ipv4Addr,
    pub port: u16,
}

mod label {
    use observer_ebpf::{Net, Overlay};
    use serde::Serializer;

    pub fn overlay<S: Serializer>(o: &Overlay, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(o.label())
    }

    pub fn net<S: Serializer>(n: &Net, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(n.label())
    }
}

impl Target {
    pub fn key(&self, signal: Probe) -> SeriesKey {
        SeriesKey {
            peer_node: self.peer_node.clone(),
            overlay: self.overlay,
            dst_net: self.dst_net,
            signal,
        }
    }

    /// Whether probes of `signal` go to this target. Large probes go to a
    /// peer's own overlay addresses only (its host network): the path MTU
    /// is the node pair's and the overlay's, which they cross as a pod's
    /// packets do, while probe pods come and go with a migration (a large
    /// probe towards a pod being restarted only adds to the drops its
    /// node counts, `NEIGH_FAILED`).
    pub fn takes(&self, signal: Probe) -> bool {
        signal != Probe::Mtu || self.dst_net == Net::Host
    }

    fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.port))
    }
}

/// What a prober probes; replaced whole at runtime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Probed at [`ProberConfig::rate`] each, every signal of the config.
    pub steady: Vec<Target>,
    pub sweep: Sweep,
    /// Packets a second the MTU ladders may send ([`ladder`]); none
    /// (no ladder) unless positive.
    pub ladder_rate: f64,
}

/// Targets visited in turn, round after round: a visit sends one probe of
/// each of `signals` to one target, and visits come `rate` a second. A
/// target's series exists while its probes are in the window: between
/// visits it ages out (nothing is held for it), and a target that leaves
/// the sweep just is not visited again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sweep {
    pub targets: Vec<Target>,
    /// Visits per second (all targets together), at most
    /// [`MAX_SWEEP_RATE`]; none (no sweep) unless positive.
    pub rate: f64,
    pub signals: Vec<Probe>,
}

/// The fastest sweep: a visit every 10 µs.
pub const MAX_SWEEP_RATE: f64 = 100_000.0;

impl Sweep {
    /// Time for one round: every target visited once.
    pub fn period(&self) -> Duration {
        if self.targets.is_empty() || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(self.targets.len() as f64 / self.rate)
    }
}

/// Every target steady, the way the prober was first written.
impl From<Vec<Target>> for Schedule {
    fn from(steady: Vec<Target>) -> Self {
        Schedule {
            steady,
            sweep: Sweep::default(),
            ladder_rate: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProberConfig {
    /// Probes per second per target, for each signal.
    pub rate: f64,
    /// A probe without a reply (or handshake) this long is lost.
    pub timeout: Duration,
    /// Each interval is stretched or shrunk by up to this fraction.
    pub jitter: f64,
    /// Replies up to this long after their probe count as late, not stray.
    pub late_horizon: Duration,
    pub signals: Vec<Probe>,
    /// TCP probes in flight at once; beyond, probes are skipped and
    /// counted (`tcp_over_cap`), not lost: the limit is ours, not the
    /// network's.
    pub max_tcp_in_flight: usize,
}

impl Default for ProberConfig {
    fn default() -> Self {
        ProberConfig {
            rate: 10.0,
            timeout: Duration::from_secs(1),
            jitter: 0.2,
            late_horizon: Duration::from_secs(10),
            signals: Probe::ALL.to_vec(),
            max_tcp_in_flight: 4096,
        }
    }
}

impl ProberConfig {
    fn validate(&self) -> Result<Duration> {
        let bad = |what: String| Err(Error::Probe(what));
        if !(self.rate > 0.0 && self.rate <= 1000.0) {
            return bad(format!(
                "rate {} must be in (0, 1000] per second",
                self.rate
            ));
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive".into());
        }
        if self.late_horizon < self.timeout {
            return bad(format!(
                "late horizon {:?} is shorter than the timeout {:?}",
                self.late_horizon, self.timeout
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter {} must be in [0, 1)", self.jitter));
        }
        if self.signals.is_empty() {
            return bad("no signal to probe with".into());
        }
        Ok(Duration::from_secs_f64(1.0 / self.rate))
    }
}

/// A running prober: replace its targets through the `watch` sender whose
/// receiver went to [`Prober::spawn`], stop it with [`Prober::stop`].
/// Dropped without `stop`, it aborts, leaving probes in flight unresolved.
pub struct Prober {
    stop: Option<oneshot::Sender<()>>,
    /// Dropped with the prober: its thread ends at once.
    _abort: oneshot::Sender<()>,
    done: oneshot::Receiver<Result<()>>,
}

impl Prober {
    /// Starts probing on a thread of its own (`prober`), with a
    /// single-threaded runtime: the engine is one task whose wake-ups
    /// follow its packets, so another thread would only add hand-overs,
    /// and nothing else the process runs (HTTP requests, readings) delays
    /// the reading of an echo, which would show as RTT. The thread is in
    /// the network namespace of the thread that calls this, and so are
    /// the probes' sockets.
    ///
    /// `targets` is a [`Schedule`], or anything that makes one (a
    /// `Vec<Target>`: all steady). Each new value replaces the schedule:
    /// steady targets kept keep their schedule, new ones start at a random
    /// phase, removed ones stop at once (their probes in flight still
    /// resolve, so leaving creates no loss); a new sweep goes on after the
    /// target the old one visited last. A dropped sender leaves the last
    /// schedule in place.
    pub fn spawn<S>(
        config: ProberConfig,
        stats: ProbeStats,
        targets: watch::Receiver<S>,
    ) -> Result<Prober>
    where
        S: Clone + Into<Schedule> + Send + Sync + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let (abort, aborted) = oneshot::channel::<()>();
        let (finished, done) = oneshot::channel();
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("prober".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started.send(Err(Error::io("prober runtime", e)));
                        return;
                    }
                };
                // Its sockets are registered with this runtime's reactor.
                let engine = {
                    let _entered = runtime.enter();
                    Engine::new(config, stats)
                };
                let engine = match engine {
                    Ok(engine) => {
                        let _ = started.send(Ok(()));
                        engine
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let ran = runtime.block_on(async {
                    tokio::select! {
                        ran = engine.run(targets, async {
                            let _ = stopped.await;
                        }) => Some(ran),
                        _ = aborted => None,
                    }
                });
                if let Some(ran) = ran {
                    let _ = finished.send(ran);
                }
            })
            .map_err(|e| Error::io("prober thread", e))?;
        start
            .recv()
            .map_err(|e| Error::io("prober thread", io::Error::other(e)))??;
        Ok(Prober {
            stop: Some(stop),
            _abort: abort,
            done,
        })
    }

    /// Stops sending, waits for the probes in flight to resolve (at most
    /// the timeout), so the totals add up: sent = received + lost.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.done).await.map_err(|e| {
            Error::io(
                "prober thread",
                io::Error::other(format!("ended without its result: {e}")),
            )
        })?
    }
}

/// splitmix64: jitter needs spread, not secrecy.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into an 8-byte buffer.
        unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(u64::from_ne_bytes(seed) ^ t ^ u64::from(std::process::id()) << 32)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A small echo answered this recently means small probes pass.
pub const SMALL_FRESH: Duration = Duration::from_secs(5);
/// The largest probe: a jumbo frame's IP packet; larger routes are probed
/// at this size.
pub const MAX_PROBE_SIZE: u32 = 9000;

struct Scheduled {
    target: Target,
    recorders: HashMap<Probe, Recorder>,
}

/// What a UDP probe was.
enum What {
    /// A small echo.
    Echo(Target),
    /// A large probe, `size` bytes.
    Large(Target, u32),
    /// A rung of the MTU ladder: no series counts it.
    Rung(Target, u32),
}

/// One target's MTU search, or its answer held.
struct Search {
    ladder: ladder::Ladder,
    recorder: Recorder,
    state: SearchState,
}

enum SearchState {
    /// Waiting for tokens to send its next round.
    Ready,
    /// A round's rungs (size, sequence) are out until `until`.
    Round {
        until: Instant,
        rungs: Vec<(u32, u64, bool)>,
    },
    /// Over: its answer stands until then.
    Held(Instant),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    id: u64,
    signal: Probe,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Waiting,
    Answered,
    /// Timed out, or never left (send error).
    Lost,
    /// ICMP port unreachable came back: nothing listens.
    Refused,
    /// Timed out, then answered.
    Late,
}

/// A UDP probe, from its sending until `late_horizon` after.
struct Pending {
    /// None for a ladder's rung.
    recorder: Option<Recorder>,
    what: What,
    sent: Instant,
    sent_ns: u64,
    fate: Fate,
}

/// Where the sweep is.
#[derive(Default)]
struct SweepState {
    sweep: Sweep,
    /// Index of the next target to visit.
    next: usize,
    /// When; none while there is nothing to sweep.
    at: Option<Instant>,
    /// The target visited last, to go on after it when the list changes.
    last: Option<Target>,
}

/// A TCP probe's handshake, polled by the engine's own task.
type Handshake = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Engine {
    config: ProberConfig,
    interval: Duration,
    sweep: SweepState,
    stats: ProbeStats,
    rng: Rng,
    sender: u64,
    epoch: Instant,
    udp: UdpSocket,
    by_target: HashMap<Target, u64>,
    scheduled: HashMap<u64, Scheduled>,
    next_id: u64,
    due: BinaryHeap<Reverse<Due>>,
    /// UDP probes by sequence: `pending[i]` has sequence `base + i`.
    pending: VecDeque<Pending>,
    base: u64,
    /// `pending[..timed_out]` are past their timeout.
    timed_out: usize,
    /// Every probe before this sequence is past its timeout or resolved:
    /// the first whose timeout is a wake-up is at or after it.
    waiting_from: u64,
    /// Zeros but for the header written at each send: every datagram is
    /// a prefix of it.
    datagram: Vec<u8>,
    tcp: FuturesUnordered<Handshake>,
    route_mtu: route::RouteMtus,
    /// When each target's small echo was last answered.
    small_ok: HashMap<Target, Instant>,
    searches: HashMap<Target, Search>,
    tokens: ladder::TokenBucket,
}

impl Engine {
    fn new(config: ProberConfig, stats: ProbeStats) -> Result<Engine> {
        let interval = config.validate()?;
        let udp = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                icmp::receive_errors(&s)?;
                icmp::probe_path_mtu(&s)?;
                UdpSocket::from_std(s)
            })
            .map_err(|e| Error::io("prober UDP socket", e))?;
        let mut rng = Rng::seeded();
        Ok(Engine {
            sender: rng.next(),
            rng,
            config,
            interval,
            sweep: SweepState::default(),
            stats,
            epoch: Instant::now(),
            udp,
            by_target: HashMap::new(),
            scheduled: HashMap::new(),
            next_id: 0,
            due: BinaryHeap::new(),
            pending: VecDeque::new(),
            base: 0,
            timed_out: 0,
            waiting_from: 0,
            datagram: vec![0; (MAX_PROBE_SIZE as usize - 28).max(wire::HEADER_LEN)],
            tcp: FuturesUnordered::new(),
            route_mtu: route::RouteMtus::new()
                .map_err(|e| Error::io("prober route MTU socket", e))?,
            small_ok: HashMap::new(),
            searches: HashMap::new(),
            tokens: ladder::TokenBucket::new(0.0, Instant::now()),
        })
    }

    async fn run<S: Clone + Into<Schedule>>(
        mut self,
        mut targets: watch::Receiver<S>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let initial = targets.borrow_and_update().clone();
        self.replace(initial.into(), Instant::now());
        let mut shutdown = std::pin::pin!(shutdown);
        let mut targets_open = true;
        let mut stop_at: Option<Instant> = None;
        let mut next_prune = Instant::now();
        let mut buf = [0u8; 2048];
        // One timer, moved to each next wake-up.
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(next_prune.into()));
        loop {
            let now = Instant::now();
            self.expire(now);
            if now >= next_prune {
                self.stats.prune(now);
                self.forget(now);
                next_prune = now + Duration::from_secs(1);
            }
            match stop_at {
                None => {
                    self.send_due(now).await;
                    self.climb(now).await;
                }
                Some(at) if now >= at && self.timed_out == self.pending.len() => break,
                Some(_) => {}
            }
            let mut wake = next_prune;
            if stop_at.is_none()
                && let Some(Reverse(due)) = self.due.peek()
            {
                wake = wake.min(due.at);
            }
            if stop_at.is_none()
                && let Some(at) = self.sweep.at
            {
                wake = wake.min(at);
            }
            if let Some(deadline) = self.next_timeout() {
                wake = wake.min(deadline);
            }
            if let Some(at) = stop_at {
                wake = wake.min(at);
            }
            for search in self.searches.values() {
                match search.state {
                    SearchState::Round { until, .. } => wake = wake.min(until),
                    // Tokens come at the ladder's rate: look again soon.
                    SearchState::Ready => wake = wake.min(now + ladder::WAIT),
                    SearchState::Held(_) => {}
                }
            }
            if sleep.deadline() != wake.into() {
                sleep.as_mut().reset(wake.into());
            }
            tokio::select! {
                _ = &mut shutdown, if stop_at.is_none() => {
                    stop_at = Some(Instant::now() + self.config.timeout);
                }
                changed = targets.changed(), if stop_at.is_none() && targets_open => {
                    match changed {
                        Ok(()) => {
                            let schedule = targets.borrow_and_update().clone();
                            self.replace(schedule.into(), Instant::now());
                        }
                        Err(_) => targets_open = false,
                    }
                }
                got = self.udp.recv_from(&mut buf) => {
                    self.received(got, &mut buf);
                    // Whatever else came meanwhile (a visit's echoes come
                    // back together), in the same wake-up.
                    loop {
                        match self.udp.try_recv_from(&mut buf) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            got => self.received(got, &mut buf),
                        }
                    }
                }
                Some(()) = self.tcp.next(), if !self.tcp.is_empty() => {}
                () = sleep.as_mut() => {}
            }
        }
        // TCP probes end by their own timeout.
        while self.tcp.next().await.is_some() {}
        self.stats.prune(Instant::now());
        Ok(())
    }

    /// A datagram or an error from the UDP socket.
    fn received(&mut self, got: io::Result<(usize, SocketAddr)>, buf: &mut [u8]) {
        match got {
            Ok((len, _)) => self.reply(&buf[..len], Instant::now()),
            // IP_RECVERR: an ICMP error is pending in the error queue,
            // with the datagram it answers.
            Err(_) => self.icmp_errors(buf, Instant::now()),
        }
    }

    /// When the first UDP probe still waiting for its echo times out.
    /// Answered and refused probes need no wake-up at their timeout:
    /// [`Engine::expire`] passes them at the next one.
    fn next_timeout(&mut self) -> Option<Instant> {
        let from = self.waiting_from.max(self.base + self.timed_out as u64);
        let mut i = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        while let Some(p) = self.pending.get(i)
            && p.fate != Fate::Waiting
        {
            i += 1;
        }
        self.waiting_from = self.base + i as u64;
        self.pending.get(i).map(|p| p.sent + self.config.timeout)
    }

    /// Makes `schedule` what is probed.
    fn replace(&mut self, schedule: Schedule, now: Instant) {
        self.tokens.set_rate(schedule.ladder_rate, now);
        self.replace_sweep(schedule.sweep, now);
        self.replace_steady(schedule.steady, now);
    }

    /// A new sweep goes on after the target visited last if it is still
    /// there, else at the same index; a faster pace applies at once.
    fn replace_sweep(&mut self, sweep: Sweep, now: Instant) {
        let state = &mut self.sweep;
        let pace = sweep.rate.is_finite() && sweep.rate > 0.0;
        if sweep.targets.is_empty() || sweep.signals.is_empty() || !pace {
            *state = SweepState::default();
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / sweep.rate.min(MAX_SWEEP_RATE));
        state.next = match &state.last {
            Some(last) => match sweep.targets.iter().position(|t| t == last) {
                Some(i) => (i + 1) % sweep.targets.len(),
                None => state.next % sweep.targets.len(),
            },
            None => 0,
        };
        state.at = Some(match state.at {
            Some(at) => at.min(now + interval),
            // A random phase, as steady targets start.
            None => now + interval.mul_f64(self.rng.unit()),
        });
        state.sweep = sweep;
    }

    /// Makes `list` the steady targets.
    fn replace_steady(&mut self, list: Vec<Target>, now: Instant) {
        let wanted: HashMap<Target, ()> = list.into_iter().map(|t| (t, ())).collect();
        let gone: Vec<Target> = self
            .by_target
            .keys()
            .filter(|t| !wanted.contains_key(*t))
            .cloned()
            .collect();
        for target in gone {
            if let Some(id) = self.by_target.remove(&target) {
                // Its entries in `due` are skipped when they come up.
                self.scheduled.remove(&id);
            }
        }
        for (target, ()) in wanted {
            if self.by_target.contains_key(&target) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let signals: Vec<Probe> = self
                .config
                .signals
                .iter()
                .copied()
                .filter(|s| target.takes(*s))
                .collect();
            let recorders = signals
                .iter()
                .map(|s| (*s, self.stats.recorder(target.key(*s))))
                .collect();
            for signal in signals {
                let phase = self.interval.mul_f64(self.rng.unit());
                self.due.push(Reverse(Due {
                    at: now + phase,
                    id,
                    signal,
                }));
            }
            self.by_target.insert(target.clone(), id);
            self.scheduled.insert(id, Scheduled { target, recorders });
        }
    }

    async fn send_due(&mut self, now: Instant) {
        while let Some(Reverse(due)) = self.due.peek().copied()
            && due.at <= now
        {
            self.due.pop();
            let Some(s) = self.scheduled.get(&due.id) else {
                continue;
            };
            let (target, recorder) = (s.target.clone(), s.recorders[&due.signal].clone());
            match due.signal {
                Probe::Udp | Probe::Mtu => self.send_udp(&target, recorder, due.signal).await,
                Probe::Tcp => self.send_tcp(&target, recorder),
            }
            let stretch = 1.0 + self.config.jitter * (2.0 * self.rng.unit() - 1.0);
            let mut next = due.at + self.interval.mul_f64(stretch);
            if next < now {
                // Fell behind (a stalled runtime): resume at a fresh
                // phase rather than fire the missed probes in a burst.
                next = now + self.interval.mul_f64(self.rng.unit());
            }
            self.due.push(Reverse(Due { at: next, ..due }));
        }
        self.sweep_due(now).await;
    }

    /// The sweep's visits that are due: one probe of each of its signals
    /// to the next target. Recorders are made per visit, so a target
    /// holds a series only while its probes are in flight or in the window.
    async fn sweep_due(&mut self, now: Instant) {
        while let Some(at) = self.sweep.at
            && at <= now
        {
            let sweep = &self.sweep.sweep;
            let target = sweep.targets[self.sweep.next].clone();
            let signals = sweep.signals.clone();
            let interval = Duration::from_secs_f64(1.0 / sweep.rate.min(MAX_SWEEP_RATE));
            self.sweep.next = (self.sweep.next + 1) % sweep.targets.len();
            for signal in signals.into_iter().filter(|s| target.takes(*s)) {
                let recorder = self.stats.recorder(target.key(signal));
                match signal {
                    Probe::Udp | Probe::Mtu => self.send_udp(&target, recorder, signal).await,
                    Probe::Tcp => self.send_tcp(&target, recorder),
                }
            }
            self.sweep.last = Some(target);
            let stretch = 1.0 + self.config.jitter * (2.0 * self.rng.unit() - 1.0);
            let mut next = at + interval.mul_f64(stretch);
            if next < now {
                // Fell behind: no burst of the missed visits (the budget
                // holds); the round just takes longer.
                next = now + interval.mul_f64(self.rng.unit());
            }
            self.sweep.at = Some(next);
        }
    }

    /// Sends a small echo, or a large probe of the route's MTU.
    async fn send_udp(&mut self, target: &Target, recorder: Recorder, signal: Probe) {
        let what = match signal {
            Probe::Mtu => {
                let size = self.route_mtu(target.addr, Instant::now());
                recorder.probed(size);
                What::Large(target.clone(), size)
            }
            _ => What::Echo(target.clone()),
        };
        self.send_datagram(target, Some(recorder), what).await;
    }

    /// Sends one probe datagram, padded to the size `what` says, and
    /// keeps it pending until its echo or its timeout.
    async fn send_datagram(
        &mut self,
        target: &Target,
        recorder: Option<Recorder>,
        what: What,
    ) -> u64 {
        let sent = Instant::now();
        let sent_ns = u64::try_from(sent.duration_since(self.epoch).as_nanos()).unwrap_or(0);
        let seq = self.base + self.pending.len() as u64;
        let header = Header::request(self.sender, seq, sent_ns).encode();
        let size = match &what {
            What::Echo(_) => ladder::SMALLEST,
            What::Large(_, size) | What::Rung(_, size) => *size,
        };
        // Padding after the header: the IP packet is `size` bytes.
        let len = (size.saturating_sub(28) as usize).clamp(wire::HEADER_LEN, self.datagram.len());
        self.datagram[..wire::HEADER_LEN].copy_from_slice(&header);
        let request = &self.datagram[..len];
        if let Some(r) = &recorder {
            r.sent(sent);
        }
        let mut sent_to = self.udp.send_to(request, target.socket_addr()).await;
        if matches!(&sent_to, Err(e) if e.kind() == io::ErrorKind::ConnectionRefused) {
            // An earlier probe's refusal (IP_RECVERR), reported by this
            // send instead of being sent: its details wait in the error
            // queue, and this datagram goes now.
            sent_to = self.udp.send_to(request, target.socket_addr()).await;
        }
        let fate = match sent_to {
            Ok(_) => Fate::Waiting,
            Err(e) => {
                if let Some(r) = &recorder {
                    r.lost(sent, loss_reason(&e));
                }
                Fate::Lost
            }
        };
        self.pending.push_back(Pending {
            recorder,
            what,
            sent,
            sent_ns,
            fate,
        });
        seq
    }

    /// The MTU of the route to `addr`: what the kernel would let a
    /// datagram to it be without fragmenting, learnt exceptions included.
    fn route_mtu(&mut self, addr: Ipv4Addr, now: Instant) -> u32 {
        match self.route_mtu.get(addr, now) {
            Ok(mtu) => mtu.clamp(ladder::SMALLEST, MAX_PROBE_SIZE),
            Err(_) => {
                self.stats.unattributed("route_mtu_error");
                // The smallest MTU every IPv4 path carries.
                576
            }
        }
    }

    /// A large probe to `target` was lost: an MTU black hole if its small
    /// echo passes; a search starts unless one runs or its answer holds.
    fn large_lost(&mut self, target: &Target, size: u32, recorder: &Recorder, now: Instant) {
        let small_passes = self
            .small_ok
            .get(target)
            .is_some_and(|at| now.saturating_duration_since(*at) <= SMALL_FRESH);
        if !small_passes || self.tokens_off() {
            return;
        }
        match self.searches.get(target) {
            Some(Search {
                state: SearchState::Held(until),
                ..
            }) if *until <= now => {}
            Some(_) => return,
            None => {}
        }
        self.searches.insert(
            target.clone(),
            Search {
                ladder: ladder::Ladder::new(size),
                recorder: recorder.clone(),
                state: SearchState::Ready,
            },
        );
    }

    fn tokens_off(&self) -> bool {
        self.tokens.rate() <= 0.0
    }

    /// Moves every search on: a round whose wait is over narrows the
    /// ladder, a ladder done gives its answer, a ready one sends its next
    /// round if the bucket has the tokens.
    async fn climb(&mut self, now: Instant) {
        let mut rounds: Vec<(Target, Vec<u32>)> = Vec::new();
        for (target, search) in &mut self.searches {
            if let SearchState::Round { until, rungs } = &search.state {
                if *until > now {
                    continue;
                }
                let outcome: Vec<(u32, bool)> = rungs.iter().map(|(s, _, ok)| (*s, *ok)).collect();
                search.ladder.narrow(&outcome);
                search.state = SearchState::Ready;
            }
            if !matches!(search.state, SearchState::Ready) {
                continue;
            }
            if search.ladder.done() {
                search.recorder.fits(search.ladder.fits());
                search.state = SearchState::Held(now + ladder::HOLD);
                continue;
            }
            // Without the tokens, the round waits for them (the next
            // pass, within `ladder::WAIT`): the budget holds.
            let sizes = search.ladder.rungs();
            if self.tokens.take(sizes.len(), now) {
                rounds.push((target.clone(), sizes));
            }
        }
        for (target, sizes) in rounds {
            let mut rungs = Vec::with_capacity(sizes.len());
            for size in sizes {
                let seq = self
                    .send_datagram(&target, None, What::Rung(target.clone(), size))
                    .await;
                rungs.push((size, seq, false));
            }
            self.stats.count_rungs(rungs.len() as u64);
            if let Some(search) = self.searches.get_mut(&target) {
                search.state = SearchState::Round {
                    until: Instant::now() + ladder::WAIT,
                    rungs,
                };
            }
        }
    }

    /// Forgets route MTUs past their time, small echoes too old to
    /// count, and searches whose answer no longer holds (every search,
    /// when the schedule leaves the ladders no packets): each map stays
    /// within the targets probed lately.
    fn forget(&mut self, now: Instant) {
        if self.tokens_off() {
            self.searches.clear();
        }
        self.route_mtu.expire(now);
        self.small_ok
            .retain(|_, at| now.saturating_duration_since(*at) <= SMALL_FRESH);
        self.searches
            .retain(|_, s| !matches!(s.state, SearchState::Held(until) if until <= now));
    }

    fn send_tcp(&mut self, target: &Target, recorder: Recorder) {
        if self.tcp.len() >= self.config.max_tcp_in_flight {
            self.stats.unattributed("tcp_over_cap");
            return;
        }
        let (addr, timeout) = (target.socket_addr(), self.config.timeout);
        let start = Instant::now();
        recorder.sent(start);
        self.tcp.push(Box::pin(async move {
            let result = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
            let now = Instant::now();
            match result {
                Ok(Ok(stream)) => {
                    recorder.received(now, now - start);
                    // RST on drop: no TIME_WAIT from thousands of probes.
                    let _ = stream.set_zero_linger();
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => recorder.refused(now),
                Ok(Err(e)) => recorder.lost(now, loss_reason(&e)),
                Err(_) => recorder.lost(now, LossReason::Timeout),
            }
        }));
    }

    /// Resolves the probes whose timeout passed, and forgets those whose
    /// late horizon did.
    fn expire(&mut self, now: Instant) {
        let mut large_lost = Vec::new();
        while let Some(p) = self.pending.get_mut(self.timed_out)
            && p.sent + self.config.timeout <= now
        {
            if p.fate == Fate::Waiting {
                p.fate = Fate::Lost;
                if let Some(r) = &p.recorder {
                    r.lost(now, LossReason::Timeout);
                    if let What::Large(target, size) = &p.what {
                        large_lost.push((target.clone(), *size, r.clone()));
                    }
                }
            }
            self.timed_out += 1;
        }
        for (target, size, recorder) in large_lost {
            self.large_lost(&target, size, &recorder, now);
        }
        while self.timed_out > 0
            && let Some(p) = self.pending.front()
            && p.sent + self.config.late_horizon <= now
        {
            self.pending.pop_front();
            self.base += 1;
            self.timed_out -= 1;
        }
    }

    fn reply(&mut self, datagram: &[u8], now: Instant) {
        let header = match Header::decode(datagram) {
            Ok(h) if h.kind == Kind::Reply => h,
            Ok(_) => return self.stats.unattributed("not_a_reply"),
            Err(e) => return self.stats.unattributed(wire_label(e)),
        };
        if header.sender != self.sender {
            return self.stats.unattributed("other_prober");
        }
        let Some(p) = header
            .seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.pending.get_mut(i))
        else {
            return self.stats.unattributed("stray");
        };
        if p.sent_ns != header.sent_ns {
            return self.stats.unattributed("mismatch");
        }
        let rtt = now.saturating_duration_since(p.sent);
        let Some(recorder) = &p.recorder else {
            // A rung: answered in time if its round still waits.
            if let (Fate::Waiting, What::Rung(target, _)) = (p.fate, &p.what) {
                p.fate = Fate::Answered;
                if let Some(Search {
                    state: SearchState::Round { rungs, .. },
                    ..
                }) = self.searches.get_mut(target)
                    && let Some(rung) = rungs.iter_mut().find(|r| r.1 == header.seq)
                {
                    rung.2 = true;
                }
            }
            return;
        };
        match p.fate {
            Fate::Waiting if rtt < self.config.timeout => {
                p.fate = Fate::Answered;
                recorder.received(now, rtt);
                match &p.what {
                    What::Echo(target) => {
                        self.small_ok.insert(target.clone(), now);
                    }
                    What::Large(target, _) => {
                        // The size passes: no black hole (any more).
                        recorder.fits(None);
                        self.searches.remove(target);
                    }
                    What::Rung(..) => {}
                }
            }
            Fate::Waiting => {
                // Timed out a moment ago, before `expire` saw it.
                p.fate = Fate::Late;
                recorder.lost(now, LossReason::Timeout);
                recorder.late(now);
            }
            Fate::Lost => {
                p.fate = Fate::Late;
                recorder.late(now);
            }
            Fate::Answered | Fate::Late | Fate::Refused => self.stats.unattributed("duplicate"),
        }
    }

    /// Drains the socket's error queue: each entry is an ICMP error and
    /// the start of the request it answers, so the probe is known by its
    /// sequence. A port unreachable is a refusal (not loss); the other
    /// errors leave the probe to its timeout.
    fn icmp_errors(&mut self, buf: &mut [u8], now: Instant) {
        while let Some(queued) = icmp::next_error(&self.udp, buf) {
            let Ok(icmp::Queued { errno, info, len }) = queued else {
                return self.stats.unattributed("receive_error");
            };
            if errno == libc::EMSGSIZE {
                self.frag_needed(&buf[..len], info, now);
                continue;
            }
            if errno != libc::ECONNREFUSED {
                self.stats.unattributed("icmp_error");
                continue;
            }
            let header = match Header::decode(&buf[..len]) {
                Ok(h) if h.kind == Kind::Request && h.sender == self.sender => h,
                _ => {
                    self.stats.unattributed("icmp_error");
                    continue;
                }
            };
            let probe = header
                .seq
                .checked_sub(self.base)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.pending.get_mut(i))
                .filter(|p| p.sent_ns == header.sent_ns);
            match probe {
                Some(p) if p.fate == Fate::Waiting => {
                    p.fate = Fate::Refused;
                    if let Some(r) = &p.recorder {
                        r.refused(now);
                    }
                }
                _ => self.stats.unattributed("icmp_error"),
            }
        }
    }

    /// An ICMP "fragmentation needed" (the kernel's EMSGSIZE, the
    /// next-hop MTU in `ee_info`) answered the probe whose start is
    /// `datagram`: PMTU discovery at work, not a black hole. A large
    /// probe is refused, not lost; the route's MTU is read again, so the
    /// next ones fit. A rung stays unanswered: it did not pass.
    fn frag_needed(&mut self, datagram: &[u8], next_hop_mtu: u32, now: Instant) {
        let header = match Header::decode(datagram) {
            Ok(h) if h.kind == Kind::Request && h.sender == self.sender => h,
            _ => return self.stats.unattributed("icmp_error"),
        };
        let Some(p) = header
            .seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.pending.get_mut(i))
            .filter(|p| p.sent_ns == header.sent_ns)
        else {
            return self.stats.unattributed("icmp_error");
        };
        if let What::Large(target, _) = &p.what {
            self.route_mtu.forget(target.addr);
            if let Some(r) = &p.recorder {
                r.frag_needed(next_hop_mtu);
                if p.fate == Fate::Waiting {
                    p.fate = Fate::Refused;
                    r.refused(now);
                }
            }
        }
    }
}

fn wire_label(e: wire::WireError) -> &'static str {
    match e {
        wire::WireError::Truncated { .. } => "reply_truncated",
        wire::WireError::Magic(_) => "reply_magic",
        wire::WireError::Version(_) => "reply_version",
        _ => "reply_malformed",
    }
}

fn loss_reason(e: &io::Error) -> LossReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => LossReason::Reset,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            LossReason::Unreachable
        }
        io::ErrorKind::TimedOut => LossReason::Timeout,
        _ => LossReason::Other,
    }
}
