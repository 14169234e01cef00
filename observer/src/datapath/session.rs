//! What `observe` and `agent` share: programs loaded and configured,
//! attached to the selected interfaces, and following link changes.
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use super::{LinkEvents, LoadOptions, Observer, Placement, Selection, interfaces, reconcile};
use crate::{Error, Result, shape::ClusterShape};

pub struct Session {
    /// Shared with whoever reads counters (the agent's HTTP server).
    pub observer: Arc<Mutex<Observer>>,
    selection: Selection,
    events: AsyncFd<LinkEvents>,
    reads: Option<ReadTimes>,
}

/// When the agent's sampler reads the counters: at every multiple of
/// `interval` on the wall clock and `guard` after it (loss/ring.rs).
///
/// Attaching, detaching and checking the order of programs hold the
/// observer while they wait for the kernel's RTNL lock, which pod churn,
/// netns teardown and kubelet hold for tens to hundreds of ms. A read
/// stuck behind them comes late, and a reading's totals compare its
/// counters with a punctual peer's. So link work starts clear of the
/// reads: anything shorter than the rest of the tick never delays one
/// (and a read that is delayed says so, in the tick's lateness).
#[derive(Clone, Copy, Debug)]
pub struct ReadTimes {
    pub interval: Duration,
    pub guard: Duration,
}

impl ReadTimes {
    /// The margin kept around each read.
    const MARGIN: Duration = Duration::from_millis(30);

    /// How long link work starting at `now_ms` (Unix ms) waits to be
    /// clear of the reads: nothing where no time between them is clear.
    pub fn wait(&self, now_ms: u64) -> Duration {
        let interval = self.interval.as_millis() as u64;
        let margin = Self::MARGIN.as_millis() as u64;
        let clear_from = self.guard.as_millis() as u64 + margin;
        if interval == 0 || clear_from + margin >= interval {
            return Duration::ZERO;
        }
        let phase = now_ms % interval;
        if phase < clear_from {
            Duration::from_millis(clear_from - phase)
        } else if phase >= interval - margin {
            Duration::from_millis(interval - phase + clear_from)
        } else {
            Duration::ZERO
        }
    }

    async fn wait_clear(reads: Option<Self>) {
        if let Some(reads) = reads {
            let now = crate::loss::ring::unix_ms(std::time::SystemTime::now());
            tokio::time::sleep(reads.wait(now)).await;
        }
    }
}

impl Session {
    /// Loads, configures and attaches. A named interface that does not
    /// exist is an error now, not a silent wait.
    pub fn open(options: LoadOptions, shape: &ClusterShape, selection: Selection) -> Result<Self> {
        let netns = options.netns.clone();
        let mut observer = Observer::load(options)?;
        if let Some(report) = observer.pin_report() {
            eprintln!("crossover: {}", report.summary());
        }
        observer.configure(shape)?;
        if let Some(rules) = &selection.follow {
            eprint!("crossover: following interfaces by name, first match wins:\n{rules}");
        }
        let events = {
            let _ns = netns.as_deref().map(crate::netns::enter).transpose()?;
            if let Some(name) = selection.missing(&interfaces()).first() {
                return Err(Error::NoInterface(name.clone()));
            }
            LinkEvents::open()
                .map_err(|e| Error::io("opening a netlink socket for link events", e))?
        };
        // SAFETY: `LinkEvents` owns its fd and keeps it open for as long as
        // the AsyncFd holds it; nothing else closes it.
        let events = unsafe { AsyncFd::register(events) }
            .map_err(|e| Error::io("registering the netlink socket", e.into()))?;
        let first = reconcile(&mut observer, &selection)?;
        if let Some((name, err)) = first.failed.first() {
            return Err(Error::io(
                format!("attaching to {name}"),
                std::io::Error::other(err.clone()),
            ));
        }
        keep_order(&mut observer)?;
        Ok(Session {
            observer: Arc::new(Mutex::new(observer)),
            selection,
            events,
            reads: None,
        })
    }

    /// Keeps link work clear of the sampler's reads from now on.
    pub fn keep_clear_of(&mut self, reads: ReadTimes) {
        self.reads = Some(reads);
    }

    pub fn observer(&self) -> MutexGuard<'_, Observer> {
        lock(&self.observer)
    }

    /// Waits for link changes and reconciles once they come; for a
    /// `select!` loop.
    pub async fn follow_links(&self) -> Result<()> {
        let mut guard = self
            .events
            .readable()
            .await
            .map_err(|e| Error::io("netlink socket", e))?;
        if guard.get_inner().drain() {
            ReadTimes::wait_clear(self.reads).await;
            let done = reconcile(&mut lock(&self.observer), &self.selection)?;
            for name in &done.attached {
                eprintln!("crossover: attached to {name}");
            }
            for name in &done.detached {
                eprintln!("crossover: {name} is gone");
            }
            for (name, err) in &done.failed {
                eprintln!("crossover: {name}: {err}");
            }
            keep_order(&mut lock(&self.observer))?;
        }
        guard.clear_ready();
        Ok(())
    }

    /// Checks every hook's placement (the agent does it every
    /// [`ORDER_CHECK`], as attaching a TCX program or a filter raises no
    /// link event) and re-asserts ours where something got in front; clear
    /// of the sampler's reads.
    pub async fn keep_order(&self) -> Result<()> {
        ReadTimes::wait_clear(self.reads).await;
        keep_order(&mut lock(&self.observer))
    }

    pub fn attached_list(&self) -> String {
        let observer = self.observer();
        let list: Vec<String> = observer
            .attached()
            .map(|(n, h)| format!("{n} ({h})"))
            .collect();
        if list.is_empty() {
            "no interface yet".into()
        } else {
            list.join(", ")
        }
    }
}

/// How often the agent checks that its programs still run first.
pub const ORDER_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Re-asserts our place on every hook where something got in front, and
/// says so, and which hooks stay blind (see order.rs).
fn keep_order(observer: &mut Observer) -> Result<()> {
    let before = observer.reasserted();
    let order = observer.check_order(true)?;
    for hook in order.iter().filter(|o| o.placement == Placement::Blind) {
        eprintln!(
            "crossover: {} {} is blind: programs {:?} run before ours and may end a packet's journey there",
            hook.iface, hook.direction, hook.ahead
        );
    }
    let reasserted = observer.reasserted() - before;
    if reasserted > 0 {
        eprintln!("crossover: re-attached in front of other programs on {reasserted} hook(s)");
    }
    Ok(())
}

/// A poisoned lock only means a reader panicked; the maps are intact.
pub fn lock(observer: &Mutex<Observer>) -> MutexGuard<'_, Observer> {
    observer.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_work_waits_until_clear_of_the_reads() {
        let reads = ReadTimes {
            interval: Duration::from_secs(1),
            guard: Duration::from_millis(20),
        };
        let ms = Duration::from_millis;
        // Reads at 0 and 20 ms past each second: clear from 50 to 970.
        assert_eq!(reads.wait(5_000), ms(50));
        assert_eq!(reads.wait(5_020), ms(30));
        assert_eq!(reads.wait(5_049), ms(1));
        assert_eq!(reads.wait(5_050), ms(0));
        assert_eq!(reads.wait(5_969), ms(0));
        assert_eq!(reads.wait(5_970), ms(80));
        assert_eq!(reads.wait(5_999), ms(51));
        // Ticks too short to have a clear moment: no wait at all.
        let busy = ReadTimes {
            interval: Duration::from_millis(60),
            guard: Duration::from_millis(20),
        };
        assert_eq!(busy.wait(5_000), ms(0));
    }
}
