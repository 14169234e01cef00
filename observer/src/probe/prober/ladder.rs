//! The MTU ladder: when a target's large probes (its route's MTU, DF set)
//! are lost while its small ones are answered, the size that fits lies
//! between the two. A round sends [`RUNGS`] probes of sizes spread evenly
//! over that range at once, waits [`WAIT`] for their echoes, and narrows
//! the range to the largest answered size and the smallest lost one above
//! it; at most [`MAX_ROUNDS`] rounds (from a 1450-byte route: 154-, 17-,
//! 2-byte steps, then exact). A rung lost to anything but its size (a
//! congested queue, a lossy link) would make the answer too small, so the
//! answer `F` is verified by a last round, `F` once and `F + 1`
//! [`VERIFY`] times: it stands only if `F` passes and every `F + 1` is
//! lost (at 5% random loss, one search in 8,000 passes it by chance);
//! else the search ends without one. An answer of the probed size less
//! one is no black hole either (every smaller size passed). A search
//! costs at most 36 packets and about 1.5 s. Rungs are sent only while the condition holds (a large
//! probe answered ends the search) and only with the tokens the plan's
//! ladder budget gives ([`TokenBucket`]); a finished search is held for
//! [`HOLD`] before the next one, while its answer stands.
use std::time::{Duration, Instant};

use crate::probe::wire::HEADER_LEN;

/// Probes of one round.
pub const RUNGS: usize = 8;
/// Rounds of one search.
pub const MAX_ROUNDS: u32 = 4;
/// How long a round waits for its echoes: far beyond a cluster's RTTs,
/// well within the probes' timeout. A later echo counts as lost to the
/// ladder (the size that fits may come out lower, never higher).
pub const WAIT: Duration = Duration::from_millis(300);
/// A finished search's answer stands this long before another starts.
pub const HOLD: Duration = Duration::from_secs(30);
/// The smallest IPv4 packet a probe makes: IP and UDP headers, the probe
/// header. The small probes are this size, so it passes when they do.
pub const SMALLEST: u32 = 20 + 8 + HEADER_LEN as u32;
/// Probes of `F + 1` in the verifying round.
pub const VERIFY: usize = 3;
/// Tokens the bucket holds at most: one whole search.
pub const BURST: f64 = (RUNGS as u32 * MAX_ROUNDS) as f64 + 1.0 + VERIFY as f64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Narrow,
    Verify,
    /// Over, with the size that fits if the black hole was confirmed.
    Done(Option<u32>),
}

/// Where a search stands: `lo` passed, `hi` was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    probed: u32,
    lo: u32,
    hi: u32,
    rounds: u32,
    phase: Phase,
}

impl Ladder {
    /// A search below `probed`, the size that was lost.
    pub fn new(probed: u32) -> Ladder {
        let mut ladder = Ladder {
            probed,
            lo: SMALLEST.min(probed),
            hi: probed,
            rounds: 0,
            phase: Phase::Narrow,
        };
        ladder.settle();
        ladder
    }

    /// The sizes of the next round, ascending: up to [`RUNGS`] strictly
    /// between what passed and what was lost, or the verifying round.
    /// Empty when the search is over.
    pub fn rungs(&self) -> Vec<u32> {
        match self.phase {
            Phase::Narrow => {}
            Phase::Verify => {
                let mut sizes = vec![self.lo];
                sizes.extend([self.lo + 1; VERIFY]);
                return sizes;
            }
            Phase::Done(_) => return Vec::new(),
        }
        let (lo, width) = (u64::from(self.lo), u64::from(self.hi - self.lo));
        let mut sizes: Vec<u32> = (1..=RUNGS as u64)
            .map(|i| (lo + width * i / (RUNGS as u64 + 1)) as u32)
            .filter(|s| *s > self.lo && *s < self.hi)
            .collect();
        sizes.dedup();
        sizes
    }

    /// A round's outcome: each size sent and whether its echo came back
    /// within [`WAIT`]. The range narrows to the largest answered size
    /// and the smallest lost one above it (a lost size below an answered
    /// one was lost to something else).
    pub fn narrow(&mut self, outcome: &[(u32, bool)]) {
        if self.phase == Phase::Verify {
            let f = self.lo;
            let passed = outcome.iter().any(|(s, ok)| *s == f && *ok);
            let above: Vec<bool> = outcome
                .iter()
                .filter(|(s, _)| *s == f + 1)
                .map(|(_, ok)| *ok)
                .collect();
            let confirmed = passed && !above.is_empty() && above.iter().all(|ok| !ok);
            self.phase = Phase::Done(confirmed.then_some(f));
            return;
        }
        if self.phase != Phase::Narrow {
            return;
        }
        self.rounds += 1;
        if let Some(passed) = outcome.iter().filter(|(_, ok)| *ok).map(|(s, _)| *s).max() {
            self.lo = self.lo.max(passed);
        }
        if let Some(lost) = outcome
            .iter()
            .filter(|(s, ok)| !ok && *s > self.lo)
            .map(|(s, _)| *s)
            .min()
        {
            self.hi = self.hi.min(lost);
        }
        self.settle();
    }

    /// From narrowing to verifying once no size is left between them or
    /// the rounds are spent; straight to the end when every size below
    /// the probed one passed (no black hole).
    fn settle(&mut self) {
        if self.phase == Phase::Narrow && (self.hi - self.lo <= 1 || self.rounds >= MAX_ROUNDS) {
            self.phase = if self.lo + 1 >= self.probed {
                Phase::Done(None)
            } else {
                Phase::Verify
            };
        }
    }

    pub fn done(&self) -> bool {
        matches!(self.phase, Phase::Done(_))
    }

    /// The size that fits, once the search confirmed a black hole.
    pub fn fits(&self) -> Option<u32> {
        match self.phase {
            Phase::Done(fits) => fits,
            _ => None,
        }
    }
}

/// The ladders' packets: `rate` a second, at most [`BURST`] at once.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate.max(0.0),
            tokens: 0.0,
            at: now,
        }
    }

    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(BURST);
        self.at = now;
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes `n` tokens if there are that many.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        self.refill(now);
        if self.rate > 0.0 && self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search on a path passing up to `mtu` bytes whose `lost(n)` says
    /// if the n-th probe is lost anyway: what it finds, and the packets
    /// it sent.
    fn search_with(
        probed: u32,
        mtu: u32,
        lost: &mut dyn FnMut(usize) -> bool,
    ) -> (Option<u32>, usize) {
        let mut ladder = Ladder::new(probed);
        let mut sent = 0;
        while !ladder.done() {
            let rungs = ladder.rungs();
            assert!(!rungs.is_empty() && rungs.len() <= RUNGS, "{rungs:?}");
            assert!(rungs.windows(2).all(|w| w[0] <= w[1]), "{rungs:?}");
            let outcome: Vec<(u32, bool)> = rungs
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, *s <= mtu && !lost(sent + i)))
                .collect();
            sent += rungs.len();
            ladder.narrow(&outcome);
        }
        (ladder.fits(), sent)
    }

    fn search(probed: u32, mtu: u32) -> (Option<u32>, usize) {
        search_with(probed, mtu, &mut |_| false)
    }

    #[test]
    fn a_search_finds_the_size_that_fits_within_its_bounds() {
        for mtu in [SMALLEST, 68, 576, 1280, 1399, 1400, 1401, 1448] {
            let (fits, sent) = search(1450, mtu);
            assert_eq!(fits, Some(mtu), "through {mtu}");
            assert!(sent as f64 <= BURST, "{sent} packets");
        }
        // Every size below the probed one passes: no black hole.
        assert_eq!(search(1450, 1449).0, None);
        // A 9000-byte route: four rounds still end on the exact size.
        assert_eq!(search(9000, 8000).0, Some(8000));
        assert_eq!(search(9000, 1400).0, Some(1400));
        // Not even the small size passes: nothing fits, no answer.
        assert_eq!(search(1450, SMALLEST - 1).0, None);
    }

    #[test]
    fn random_loss_gives_no_answer_or_the_right_one() {
        // A lossy path without a black hole: 10% of every size lost,
        // whatever its size (splitmix-like, deterministic).
        let mut state = 7u64;
        let mut lossy = |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33).is_multiple_of(10)
        };
        for _ in 0..1000 {
            let (fits, _) = search_with(1450, 1450, &mut lossy);
            assert_eq!(fits, None, "a lossy path named a black hole");
        }
        // A real black hole on a lossy path: right, or no answer.
        let mut found = 0;
        for _ in 0..1000 {
            if let Some(fits) = search_with(1450, 1400, &mut lossy).0 {
                assert_eq!(fits, 1400);
                found += 1;
            }
        }
        assert!(found > 300, "{found} of 1000 searches confirmed");
    }

    #[test]
    fn a_lost_rung_below_one_that_passed_does_not_lower_the_answer() {
        let mut ladder = Ladder::new(1450);
        let rungs = ladder.rungs();
        // The first rung lost (a queue overflowed), the next passed.
        let outcome: Vec<(u32, bool)> = rungs
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i != 0 && *s <= 1400))
            .collect();
        ladder.narrow(&outcome);
        assert!(ladder.rungs().iter().all(|s| *s > rungs[0] && *s < 1450));
    }

    #[test]
    fn the_bucket_pays_for_a_round_only_with_its_tokens() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(20.0, t0);
        assert!(!bucket.take(RUNGS, t0), "empty at first");
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!bucket.take(RUNGS, at(350)), "7 tokens after 350 ms");
        assert!(bucket.take(RUNGS, at(400)));
        // Ten seconds idle fill it to one search, no more.
        let mut rounds = 0;
        while bucket.take(RUNGS, at(10_400)) {
            rounds += 1;
        }
        assert_eq!(rounds, MAX_ROUNDS);
        assert!(
            bucket.take(1 + VERIFY, at(10_400)),
            "and its verifying round"
        );
        assert!(!bucket.take(1, at(10_400)));
        let mut off = TokenBucket::new(0.0, t0);
        assert!(!off.take(1, at(100_000)), "no rate, no ladder");
    }
}
