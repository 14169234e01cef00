//! The MTU ladder: when a target's large probes (its route's MTU, DF set)
//! are lost while its small ones are answered, the size that fits lies
//! between the two. A round sends [`RUNGS`] probes of sizes spread evenly
//! over that range at once, waits [`WAIT`] for their echoes, and narrows
//! the range to the largest answered size and the smallest lost one above
//! it; at most [`MAX_ROUNDS`] rounds (from a 1450-byte route: 154-, 17-,
//! 2-byte steps, then exact), so a search costs at most 32 packets and
//! about a second. Rungs are sent only while the condition holds (a large
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
/// Tokens the bucket holds at most: one whole search.
pub const BURST: f64 = (RUNGS as u32 * MAX_ROUNDS) as f64;

/// Where a search stands: `lo` passed, `hi` was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    lo: u32,
    hi: u32,
    rounds: u32,
}

impl Ladder {
    /// A search below `probed`, the size that was lost.
    pub fn new(probed: u32) -> Ladder {
        Ladder {
            lo: SMALLEST.min(probed),
            hi: probed,
            rounds: 0,
        }
    }

    /// The sizes of the next round, ascending: up to [`RUNGS`] strictly
    /// between what passed and what was lost. Empty when the search is
    /// over.
    pub fn rungs(&self) -> Vec<u32> {
        if self.done() {
            return Vec::new();
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
    }

    /// No size left between them, or the rounds are spent.
    pub fn done(&self) -> bool {
        self.hi - self.lo <= 1 || self.rounds >= MAX_ROUNDS
    }

    /// The largest size seen to pass.
    pub fn fits(&self) -> u32 {
        self.lo
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

    /// A search against a path passing up to `mtu` bytes, every echo
    /// on time: what it finds, and the packets it sent.
    fn search(probed: u32, mtu: u32) -> (u32, usize) {
        let mut ladder = Ladder::new(probed);
        let mut sent = 0;
        while !ladder.done() {
            let rungs = ladder.rungs();
            assert!(!rungs.is_empty() && rungs.len() <= RUNGS, "{rungs:?}");
            assert!(rungs.windows(2).all(|w| w[0] < w[1]), "{rungs:?}");
            sent += rungs.len();
            let outcome: Vec<(u32, bool)> = rungs.iter().map(|s| (*s, *s <= mtu)).collect();
            ladder.narrow(&outcome);
        }
        (ladder.fits(), sent)
    }

    #[test]
    fn a_search_finds_the_size_that_fits_within_its_bounds() {
        for mtu in [SMALLEST, 68, 576, 1280, 1399, 1400, 1401, 1448, 1449] {
            let (fits, sent) = search(1450, mtu);
            assert_eq!(fits, mtu, "through {mtu}");
            assert!(sent <= RUNGS * MAX_ROUNDS as usize, "{sent} packets");
        }
        // A 9000-byte route: four rounds leave a step of a few bytes.
        let (fits, _) = search(9000, 8000);
        assert!((7990..=8000).contains(&fits), "{fits}");
        // Nothing but the small size passes.
        assert_eq!(search(1450, SMALLEST - 1).0, SMALLEST);
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
        assert!(ladder.fits() > rungs[0], "{ladder:?}");
        assert!(ladder.rungs().iter().all(|s| *s > 1200 && *s < 1450));
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
        let mut off = TokenBucket::new(0.0, t0);
        assert!(!off.take(1, at(100_000)), "no rate, no ladder");
    }
}
