//! What probes found, per (peer node, overlay, network of the target,
//! signal): monotonic totals for Prometheus counters, and a sliding window
//! (loss and RTT quantiles over the last seconds) for "is this pair losing
//! now", which a counter read twice answers only after the fact.
//!
//! Memory is bounded by the targets, not by time or by how many targets
//! have come and gone:
//! * a series' window is a ring of at most `window` one-second buckets,
//!   each with its own RTT histogram (hdrhistogram, 2 significant digits,
//!   microseconds, grown only as far as the largest RTT it saw: 1 KiB up
//!   to 255 µs, 2 KiB under a millisecond, 7 KiB at most for a 1 s
//!   timeout),
//!   allocated when the bucket gets its first reply and reused when the
//!   bucket leaves the window;
//! * a series nobody probes any more (its last target was removed and its
//!   last probe resolved) is forgotten, totals included, once its last
//!   event has left the window. Its counters then disappear from /metrics
//!   (Prometheus marks them stale); should the series come back, it starts
//!   from zero, which `rate()` reads as a counter reset. Keeping totals for
//!   ever would let a cluster whose nodes are replaced grow without bound.
//!
//! A probe is attributed to the second it was sent in for `sent`, and to
//! the second its fate was known in for `received` and `lost`: so the
//! window's loss ratio is `lost / (received + lost)`, the probes that
//! resolved in it, and probes still in flight never count as lost.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use observer_ebpf::{Net, Overlay};
use serde::{Serialize, Serializer, ser::SerializeStruct};

use crate::loss::Signal;
pub use crate::loss::mtu::PathMtu;

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// How a probe travels. Its loss is the [`Signal`] of the same name
/// (`probe_udp`, `probe_tcp`): the one list of signals is
/// [`crate::loss::Signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Echo of a datagram: one packet each way.
    Udp,
    /// A TCP handshake, timed from connect to established.
    Tcp,
    /// Echo of a datagram as large as the path to the target should pass
    /// unfragmented (its route's MTU), with DF set: one packet each way.
    /// Lost while small echoes pass, it is an MTU black hole, and the
    /// prober's ladder finds the size that fits ([`PathMtu`]).
    Mtu,
}

impl Probe {
    pub const ALL: [Probe; 3] = [Probe::Udp, Probe::Tcp, Probe::Mtu];

    pub const fn signal(self) -> Signal {
        match self {
            Probe::Udp => Signal::ProbeUdp,
            Probe::Tcp => Signal::ProbeTcp,
            Probe::Mtu => Signal::Mtu,
        }
    }

    /// Sent as a UDP datagram (an echo), small or large.
    pub const fn is_udp(self) -> bool {
        matches!(self, Probe::Udp | Probe::Mtu)
    }

    /// The signal's name, the `signal` label.
    pub const fn label(self) -> &'static str {
        self.signal().label()
    }
}

/// Why a probe counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// No reply (UDP) or no handshake (TCP) within the timeout.
    Timeout,
    /// TCP: the connection was reset during the handshake.
    Reset,
    /// No route, or an ICMP unreachable came back.
    Unreachable,
    /// Any other error sending or connecting.
    Other,
}

impl LossReason {
    pub const ALL: [LossReason; 4] = [
        LossReason::Timeout,
        LossReason::Reset,
        LossReason::Unreachable,
        LossReason::Other,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            LossReason::Timeout => "timeout",
            LossReason::Reset => "reset",
            LossReason::Unreachable => "unreachable",
            LossReason::Other => "other",
        }
    }

    /// The reasons a probe of `signal` can be lost for.
    pub fn of(signal: Probe) -> &'static [LossReason] {
        match signal {
            Probe::Udp | Probe::Mtu => &[
                LossReason::Timeout,
                LossReason::Unreachable,
                LossReason::Other,
            ],
            Probe::Tcp => &Self::ALL,
        }
    }
}

/// One series: the labels every figure of it carries. Targets of the same
/// peer, overlay and network share a series (two DaemonSet pods of a node
/// are one figure), which bounds label sets by the number of nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub peer_node: String,
    pub overlay: Overlay,
    pub dst_net: Net,
    pub signal: Probe,
}

impl Serialize for SeriesKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("SeriesKey", 4)?;
        st.serialize_field("peer_node", &self.peer_node)?;
        st.serialize_field("overlay", self.overlay.label())?;
        st.serialize_field("dst_net", self.dst_net.label())?;
        st.serialize_field("signal", self.signal.label())?;
        st.end()
    }
}

/// Everything since the series was created.
#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    pub key: SeriesKey,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Probes refused: a TCP RST to the SYN, an ICMP port unreachable to
    /// the datagram. The network delivered them and the peer answered that
    /// nothing listens: neither received nor lost.
    pub refused: u64,
    /// Lost probes by reason; every reason the signal has, zeros included,
    /// so counters exist before their first increment.
    pub lost_by_reason: Vec<(&'static str, u64)>,
    /// UDP replies that came after the timeout: those probes are lost, and
    /// counted here as well.
    pub late: u64,
    /// Sum of the RTTs of received probes (the histogram's `_sum`).
    pub rtt_sum_seconds: f64,
    /// Received probes by RTT bucket: `rtt_buckets[i]` counts RTTs in
    /// (`RTT_BUCKETS[i-1]`, `RTT_BUCKETS[i]`], the last those above every
    /// bound (only `+Inf` holds them). Not cumulative: the exposition adds.
    pub rtt_buckets: [u64; RTT_BUCKETS.len() + 1],
    /// Large probes ([`Probe::Mtu`]) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<PathMtu>,
}

/// Upper bounds, in seconds, of the RTT histogram's buckets: in-cluster
/// RTTs run from tens of microseconds (same rack, the lab) to a few
/// milliseconds (across zones), and a probe times out at 1 s. Roughly two
/// buckets a decade from 50 µs to 1 s; 13 bounds make 16 series a pair and
/// signal with `_sum` and `_count`. Fixed, so histograms of every node
/// pair aggregate (`sum by (le)`) and `histogram_quantile` works on them.
pub const RTT_BUCKETS: [f64; 13] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The bucket of an RTT: the first bound it does not exceed.
fn rtt_bucket(rtt: Duration) -> usize {
    let secs = rtt.as_secs_f64();
    RTT_BUCKETS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(RTT_BUCKETS.len())
}

/// The last seconds of a series.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    #[serde(flatten)]
    pub key: SeriesKey,
    /// Time the window covers: its configured length, less while the
    /// series is younger than that.
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// Refused probes (see [`Totals::refused`]), outside the loss ratio.
    pub refused: u64,
    pub late: u64,
    /// `lost / (received + lost)`; none when nothing resolved.
    pub loss_ratio: Option<f64>,
    /// Over the received probes; none when there were none.
    pub rtt: Option<Quantiles>,
    /// Large probes ([`Probe::Mtu`]) only: their path's MTU now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<PathMtu>,
}

/// RTT quantiles, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// The `quantile` label of each figure; 1 is the maximum.
    pub const LABELS: [&'static str; 4] = ["0.5", "0.9", "0.99", "1"];

    /// The figures in the order of [`Quantiles::LABELS`].
    pub fn values(&self) -> [f64; 4] {
        [self.p50, self.p90, self.p99, self.max]
    }
}

/// RTTs are recorded in microseconds: a lab's are tens of them.
fn new_histogram() -> Histogram<u32> {
    Histogram::new(2).expect("2 significant digits is a valid histogram")
}

#[derive(Default)]
struct Bucket {
    second: u64,
    sent: u64,
    received: u64,
    lost: u64,
    refused: u64,
    late: u64,
    rtt: Option<Histogram<u32>>,
}

#[derive(Default)]
struct Series {
    sent: u64,
    received: u64,
    lost: [u64; LossReason::ALL.len()],
    refused: u64,
    late: u64,
    rtt_sum_ns: u64,
    rtt_buckets: [u64; RTT_BUCKETS.len() + 1],
    buckets: VecDeque<Bucket>,
    /// A histogram of a bucket that left the window, for the next one.
    spare: Option<Histogram<u32>>,
    last_second: u64,
    mtu: Option<PathMtu>,
}

impl Series {
    /// The bucket of `second`, dropping those that left the window.
    fn bucket(&mut self, second: u64, window: u64) -> &mut Bucket {
        self.last_second = self.last_second.max(second);
        self.expire(second, window);
        // Events arrive in time order but for the odd one resolved on
        // another task a moment late: it goes in the newest bucket.
        if self.buckets.back().is_none_or(|b| b.second < second) {
            self.buckets.push_back(Bucket {
                second,
                ..Bucket::default()
            });
        }
        self.buckets.back_mut().expect("pushed above")
    }

    fn expire(&mut self, now_second: u64, window: u64) {
        while let Some(front) = self.buckets.front()
            && front.second + window <= now_second
        {
            if let Some(mut h) = self.buckets.pop_front().and_then(|b| b.rtt) {
                h.reset();
                self.spare = Some(h);
            }
        }
    }
}

/// Where a prober records what happened to the probes of one series.
#[derive(Clone)]
pub struct Recorder {
    series: Arc<Mutex<Series>>,
    stats: ProbeStats,
}

impl Recorder {
    fn with(&self, now: Instant, f: impl FnOnce(&mut Series, u64, u64)) {
        let second = self.stats.second(now);
        let window = self.stats.inner.window_secs;
        f(&mut lock(&self.series), second, window);
    }

    pub fn sent(&self, now: Instant) {
        self.with(now, |s, second, window| {
            s.sent += 1;
            s.bucket(second, window).sent += 1;
        });
    }

    pub fn received(&self, now: Instant, rtt: Duration) {
        self.with(now, |s, second, window| {
            s.received += 1;
            s.rtt_sum_ns = s
                .rtt_sum_ns
                .saturating_add(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
            s.rtt_buckets[rtt_bucket(rtt)] += 1;
            let spare = s.spare.take();
            let b = s.bucket(second, window);
            b.received += 1;
            let h = b
                .rtt
                .get_or_insert_with(|| spare.unwrap_or_else(new_histogram));
            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
            // It grows as needed; one that cannot grow further keeps the
            // sample at its largest value rather than losing it.
            if h.record(us).is_err() {
                h.saturating_record(us);
            }
        });
    }

    pub fn lost(&self, now: Instant, reason: LossReason) {
        self.with(now, |s, second, window| {
            s.lost[reason as usize] += 1;
            s.bucket(second, window).lost += 1;
        });
    }

    /// The peer answered that nothing listens: not loss.
    pub fn refused(&self, now: Instant) {
        self.with(now, |s, second, window| {
            s.refused += 1;
            s.bucket(second, window).refused += 1;
        });
    }

    /// The size a large probe was sent at.
    pub fn probed(&self, size: u32) {
        let mut s = lock(&self.series);
        let mtu = s.mtu.get_or_insert_with(PathMtu::default);
        mtu.probed = size;
    }

    /// What the ladder found: the largest size that passed while the
    /// probed one was lost; none once the probed size passes again.
    pub fn fits(&self, fits: Option<u32>) {
        let mut s = lock(&self.series);
        s.mtu.get_or_insert_with(PathMtu::default).fits = fits;
    }

    /// An ICMP "fragmentation needed" answered a large probe.
    pub fn frag_needed(&self, next_hop_mtu: u32) {
        let mut s = lock(&self.series);
        let mtu = s.mtu.get_or_insert_with(PathMtu::default);
        mtu.icmp_frag_needed += 1;
        mtu.icmp_next_hop = Some(next_hop_mtu);
    }

    pub fn late(&self, now: Instant) {
        self.with(now, |s, second, window| {
            s.late += 1;
            s.bucket(second, window).late += 1;
        });
    }
}

struct Registry {
    epoch: Instant,
    window_secs: u64,
    series: Mutex<BTreeMap<SeriesKey, Arc<Mutex<Series>>>>,
    /// Replies and errors no series can be blamed for, by reason.
    unattributed: Mutex<BTreeMap<&'static str, u64>>,
    /// Probes the MTU ladders sent, in no series.
    rungs: std::sync::atomic::AtomicU64,
}

/// The probes' figures, shared by the prober (which records) and the
/// agent's HTTP handlers (which read). Cheap to clone.
#[derive(Clone)]
pub struct ProbeStats {
    inner: Arc<Registry>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A recorder that panicked mid-update leaves counters, not invariants.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ProbeStats {
    /// `window` is rounded up to whole seconds, at least one.
    pub fn new(window: Duration) -> Self {
        let window_secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        ProbeStats {
            inner: Arc::new(Registry {
                epoch: Instant::now(),
                window_secs: window_secs.max(1),
                series: Mutex::new(BTreeMap::new()),
                unattributed: Mutex::new(BTreeMap::new()),
                rungs: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    pub fn window_length(&self) -> Duration {
        Duration::from_secs(self.inner.window_secs)
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.inner.epoch).as_secs()
    }

    /// The recorder of `key`'s series, created if new. While a recorder of
    /// it exists (a target, a probe in flight) the series is kept.
    pub fn recorder(&self, key: SeriesKey) -> Recorder {
        let series = lock(&self.inner.series).entry(key).or_default().clone();
        Recorder {
            series,
            stats: self.clone(),
        }
    }

    /// Counts something no series can be blamed for: a stray reply, a
    /// datagram that is not a probe.
    pub fn unattributed(&self, reason: &'static str) {
        *lock(&self.inner.unattributed).entry(reason).or_default() += 1;
    }

    /// Counts probes an MTU ladder sent.
    pub fn count_rungs(&self, n: u64) {
        self.inner
            .rungs
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Probes the MTU ladders sent so far.
    pub fn rungs(&self) -> u64 {
        self.inner.rungs.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn unattributed_totals(&self) -> Vec<(&'static str, u64)> {
        lock(&self.inner.unattributed)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Forgets series without recorders whose last event left the window.
    pub fn prune(&self, now: Instant) {
        let now = self.second(now);
        let window = self.inner.window_secs;
        lock(&self.inner.series).retain(|_, series| {
            // Only the registry holds it: no target, no probe in flight.
            // Recorders are only made under this lock, so none can appear
            // between this test and the removal.
            Arc::strong_count(series) > 1 || lock(series).last_second + window > now
        });
    }

    /// Every series' totals, in label order.
    pub fn totals(&self) -> Vec<Totals> {
        lock(&self.inner.series)
            .iter()
            .map(|(key, series)| {
                let s = lock(series);
                let reasons = LossReason::of(key.signal);
                Totals {
                    key: key.clone(),
                    sent: s.sent,
                    received: s.received,
                    lost: s.lost.iter().sum(),
                    refused: s.refused,
                    lost_by_reason: reasons
                        .iter()
                        .map(|r| (r.label(), s.lost[*r as usize]))
                        .collect(),
                    late: s.late,
                    rtt_sum_seconds: s.rtt_sum_ns as f64 / 1e9,
                    rtt_buckets: s.rtt_buckets,
                    mtu: s.mtu,
                }
            })
            .collect()
    }

    /// Every series over the window ending at `now`, in label order.
    pub fn window(&self, now: Instant) -> Vec<Window> {
        self.prune(now);
        let elapsed = now.saturating_duration_since(self.inner.epoch);
        let second = elapsed.as_secs();
        let window = self.inner.window_secs;
        // The buckets of seconds (second - window, second], the current
        // one partly elapsed.
        let oldest = (second + 1).saturating_sub(window);
        let seconds = (elapsed.as_secs_f64() - oldest as f64).max(0.0);
        lock(&self.inner.series)
            .iter()
            .map(|(key, series)| {
                let mut s = lock(series);
                s.expire(second, window);
                let mut w = Window {
                    key: key.clone(),
                    seconds,
                    sent: 0,
                    received: 0,
                    lost: 0,
                    refused: 0,
                    late: 0,
                    loss_ratio: None,
                    rtt: None,
                    mtu: s.mtu,
                };
                let mut rtt: Option<Histogram<u32>> = None;
                for b in s.buckets.iter().filter(|b| b.second >= oldest) {
                    w.sent += b.sent;
                    w.received += b.received;
                    w.lost += b.lost;
                    w.refused += b.refused;
                    w.late += b.late;
                    if let Some(h) = &b.rtt {
                        match &mut rtt {
                            None => rtt = Some(h.clone()),
                            Some(all) => all.add(h).expect("auto-resizing histograms add"),
                        }
                    }
                }
                let resolved = w.received + w.lost;
                w.loss_ratio = (resolved > 0).then(|| w.lost as f64 / resolved as f64);
                w.rtt = rtt.filter(|h| !h.is_empty()).map(|h| {
                    let secs = |us: u64| us as f64 / 1e6;
                    Quantiles {
                        p50: secs(h.value_at_quantile(0.5)),
                        p90: secs(h.value_at_quantile(0.9)),
                        p99: secs(h.value_at_quantile(0.99)),
                        max: secs(h.max()),
                    }
                });
                w
            })
            .collect()
    }

    #[cfg(test)]
    fn series_count(&self) -> usize {
        lock(&self.inner.series).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer: &str, signal: Probe) -> SeriesKey {
        SeriesKey {
            peer_node: peer.into(),
            overlay: Overlay::Legacy,
            dst_net: Net::Host,
            signal,
        }
    }

    #[test]
    fn window_counts_only_its_seconds_and_totals_everything() {
        let stats = ProbeStats::new(Duration::from_secs(3));
        let t0 = stats.inner.epoch;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let r = stats.recorder(key("b", Probe::Udp));
        for s in 0..5u64 {
            r.sent(at(s * 1000));
            r.received(at(s * 1000 + 1), Duration::from_micros(100 * (s + 1)));
        }
        let w = &stats.window(at(4500))[0];
        // Seconds 2, 3, 4: received with 300, 400 and 500 µs.
        assert_eq!((w.sent, w.received, w.lost), (3, 3, 0));
        assert_eq!(w.loss_ratio, Some(0.0));
        let q = w.rtt.unwrap();
        assert!((q.max - 500e-6).abs() < 5e-6, "{q:?}");
        assert!((q.p50 - 400e-6).abs() < 5e-6, "{q:?}");

        for s in 5..10u64 {
            r.sent(at(s * 1000));
            r.lost(at(s * 1000 + 900), LossReason::Timeout);
        }
        r.late(at(9950));
        let w = &stats.window(at(9999))[0];
        // Seconds 7, 8 and 9.
        assert_eq!((w.sent, w.received, w.lost, w.late), (3, 0, 3, 1));
        assert_eq!(w.loss_ratio, Some(1.0));
        assert!(w.rtt.is_none());
        assert!((w.seconds - 2.999).abs() < 1e-9, "{}", w.seconds);

        let t = &stats.totals()[0];
        assert_eq!((t.sent, t.received, t.lost, t.late), (10, 5, 5, 1));
        assert_eq!(t.lost_by_reason[0], ("timeout", 5));
        assert!((t.rtt_sum_seconds - 1500e-6).abs() < 1e-9);
        // 100 µs in (50, 100], 200 in (100, 250], 300-500 in (250, 500].
        assert_eq!(&t.rtt_buckets[..5], &[0, 1, 1, 3, 0]);
        assert_eq!(t.rtt_buckets.iter().sum::<u64>(), t.received);
    }

    #[test]
    fn ring_stays_bounded_and_reuses_histograms() {
        let stats = ProbeStats::new(Duration::from_secs(2));
        let t0 = stats.inner.epoch;
        let r = stats.recorder(key("b", Probe::Tcp));
        for ms in (0..100_000u64).step_by(100) {
            r.received(
                t0 + Duration::from_millis(ms),
                Duration::from_micros(ms % 700),
            );
            let s = lock(&r.series);
            assert!(s.buckets.len() <= 2, "{} buckets", s.buckets.len());
        }
        let w = &stats.window(t0 + Duration::from_millis(99_950))[0];
        assert_eq!(w.received, 20);
    }

    #[test]
    fn a_series_without_recorders_goes_one_window_after_its_last_event() {
        let stats = ProbeStats::new(Duration::from_secs(5));
        let t0 = stats.inner.epoch;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let kept = stats.recorder(key("a", Probe::Udp));
        let gone = stats.recorder(key("b", Probe::Udp));
        kept.sent(at(1));
        gone.sent(at(1));
        gone.lost(at(2), LossReason::Timeout);
        drop(gone);
        stats.prune(at(6));
        assert_eq!(stats.series_count(), 2, "still in the window");
        assert_eq!(stats.window(at(6)).len(), 2);
        stats.prune(at(7));
        assert_eq!(stats.series_count(), 1);
        assert_eq!(stats.totals()[0].key.peer_node, "a", "kept while recorded");
        // Coming back starts from zero.
        let back = stats.recorder(key("b", Probe::Udp));
        assert_eq!(stats.totals()[1].sent, 0);
        drop(back);
    }

    #[test]
    fn rtts_fall_in_the_first_bucket_they_do_not_exceed() {
        let us = Duration::from_micros;
        assert_eq!(rtt_bucket(us(1)), 0);
        assert_eq!(rtt_bucket(us(50)), 0);
        assert_eq!(rtt_bucket(us(51)), 1);
        assert_eq!(rtt_bucket(Duration::from_secs(1)), RTT_BUCKETS.len() - 1);
        assert_eq!(rtt_bucket(Duration::from_millis(1001)), RTT_BUCKETS.len());
        assert!(RTT_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histograms_grow_only_as_far_as_the_rtts_they_saw() {
        let bytes = |us: u64| {
            let mut h = new_histogram();
            h.record(us).unwrap();
            h.distinct_values() * std::mem::size_of::<u32>()
        };
        assert!(bytes(900) <= 2048, "{}", bytes(900));
        assert!(bytes(1_000_000) <= 7 * 1024, "{}", bytes(1_000_000));
    }
}
