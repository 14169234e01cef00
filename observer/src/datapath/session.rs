//! What `observe` and `agent` share: programs loaded and configured,
//! attached to the selected interfaces, and following link changes.
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::unix::AsyncFd;

use super::{LinkEvents, LoadOptions, Observer, Placement, Selection, interfaces, reconcile};
use crate::{Error, Result, shape::ClusterShape};

pub struct Session {
    /// Shared with whoever reads counters (the agent's HTTP server).
    pub observer: Arc<Mutex<Observer>>,
    selection: Selection,
    events: AsyncFd<LinkEvents>,
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
        })
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

    /// Checks every hook's placement now (the agent does it every
    /// [`ORDER_CHECK`], as attaching a TCX program or a filter raises no
    /// link event) and re-asserts ours where something got in front.
    pub fn keep_order(&self) -> Result<()> {
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
