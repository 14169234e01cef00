//! Twice per tick, on wall-clock ticks aligned across the cluster: this
//! node's own per-peer counters into the ring readers take their windows
//! from (see `loss::ring`). The agent reads no peer: a reader fetches
//! every agent's half of the same ticks. Everything read here is O(nodes):
//! the flow table is never read per tick.
//!
//! The reads run on a thread of their own, not on the async workers or
//! their blocking pool: a read's punctuality is what keeps a window's
//! edges aligned with the other nodes'. How late each read came is kept
//! with the tick and reported.
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime},
};

use super::State;
use crate::{
    Result,
    datapath::{Counters, DropRecord, FragRecord, PeerRecord, monotonic_ns},
    loss::ring::{Tick, unix_ms},
};

/// This node's counters as the last read took them: what `/metrics`
/// renders, so a scrape costs a rendering, not another read.
pub struct Reading {
    pub taken: Instant,
    pub peers: Vec<PeerRecord>,
    pub counters: Counters,
    pub drops: Vec<DropRecord>,
    pub frag_needed: Vec<FragRecord>,
}

/// Sleeps until the wall clock reaches `at_ms` (Unix ms).
fn until(at_ms: u64) {
    loop {
        let now = unix_ms(SystemTime::now());
        if now >= at_ms {
            return;
        }
        std::thread::sleep(Duration::from_millis(at_ms - now));
    }
}

/// Starts the sampler's thread; it ends with the process.
pub fn spawn(state: Arc<State>, interval: Duration, guard: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || run(&state, interval, guard))
        .map(drop)
        .map_err(|e| crate::Error::io("starting the sampler thread", e))
}

fn run(state: &State, interval: Duration, guard: Duration) {
    let interval_ms = interval.as_millis().max(1) as u64;
    let guard_ms = guard.as_millis() as u64;
    loop {
        // The next tick: a tick missed while a read was slow is skipped,
        // never read late under its name.
        let k = unix_ms(SystemTime::now()) / interval_ms + 1;
        until(k * interval_ms);
        let started = Instant::now();
        match read_tick(state, k, k * interval_ms + guard_ms) {
            Ok(tick) => state.push_tick(tick),
            Err(err) => state.count(&err),
        }
        state.set_sample_duration(started.elapsed());
    }
}

fn read_tick(state: &State, k: u64, late_at: u64) -> Result<Tick> {
    let (early_ms, early, local) = read(state, true)?;
    until(late_at);
    let (late_ms, late, _) = read(state, false)?;
    Ok(Tick::new(k, (early_ms, early), (late_ms, late))
        .with_drops(local.drops)
        .with_frag_needed(local.frag_needed))
}

/// What a tick reads of the node's local events, once (the early read):
/// the kernel's drops and its ICMP fragmentation-needed per path.
#[derive(Default)]
struct Local {
    drops: Vec<DropRecord>,
    frag_needed: Vec<FragRecord>,
}

/// One read of the per-peer counters, and when it ended (Unix ms). The
/// counters are from some instant between the tick and that end, so the
/// end is what the tick's lateness is measured by: a read that waited for
/// the observer's lock, or lost the CPU, says so rather than passing for
/// punctual (a reader's uncertainty is built on it). The early read of a
/// tick also does the tick's chores (after the read, so they never delay
/// it): the kernel's clock, expired handshakes, new slots, and the reading
/// `/metrics` serves, with the kernel's drops and fragmentation-needed.
fn read(state: &State, chores: bool) -> Result<(u64, Vec<PeerRecord>, Local)> {
    let mut observer = super::lock(&state.observer);
    let peers = observer.peers()?;
    let read_ms = unix_ms(SystemTime::now());
    if !chores {
        return Ok((read_ms, peers, Local::default()));
    }
    let drops = observer.drops().unwrap_or_else(|err| {
        state.count(&err);
        Vec::new()
    });
    let frag_needed = observer.frag_needed().unwrap_or_else(|err| {
        state.count(&err);
        Vec::new()
    });
    // Known flows' packets are stamped with this time until the next.
    if let Err(err) = observer.tick() {
        state.count(&err);
    }
    // Handshakes unanswered past the grace become counts for the next
    // read: what is in flight, a handful of entries.
    if let Err(err) = observer.expire_handshakes(monotonic_ns()) {
        state.count(&err);
    }
    // Keys first seen since the last tick get their slot.
    if let Err(err) = observer.promote_seen_peers(&peers) {
        state.count(&err);
    }
    let counters = observer.counters()?;
    drop(observer);
    // Before the kernel's queue of destroy announcements fills.
    state.drain_departed_nat();
    let refused = counters
        .get(observer_ebpf::Counter::FlowMapFull.label())
        .copied()
        .unwrap_or(0);
    let before = state.refused_flows.swap(refused, Ordering::Relaxed);
    if refused > before {
        state.table_full.notify_one();
    }
    state.set_reading(Reading {
        taken: Instant::now(),
        peers: peers.clone(),
        counters,
        drops: drops.clone(),
        frag_needed: frag_needed.clone(),
    });
    Ok((read_ms, peers, Local { drops, frag_needed }))
}
