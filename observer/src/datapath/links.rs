//! Following interfaces as they come and go: pod veths appear with every
//! pod, `cilium_vxlan` when Cilium starts, `flannel.1` goes with Flannel.
//! A netlink socket subscribed to link events wakes the agent, which then
//! reconciles what is attached against what exists.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use super::{Hook, Observer, interfaces};
use crate::Result;
use crate::iface::Rules;

/// rtnetlink multicast group for link changes.
const RTMGRP_LINK: u32 = 1;

/// A non-blocking netlink socket that becomes readable on any link change
/// in the network namespace it was created in.
pub struct LinkEvents {
    fd: OwnedFd,
}

impl LinkEvents {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket/bind syscalls; the fd is owned right away.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = RTMGRP_LINK;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            );
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(LinkEvents { fd })
        }
    }

    /// Reads and discards every pending event; true if there was any. The
    /// content does not matter: a change of any link triggers a rescan,
    /// which is cheap and cannot miss an event the way parsing could.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: valid buffer and length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                any = true;
                continue;
            }
            // EAGAIN: drained. ENOBUFS: we fell behind; a rescan covers it.
            return any || io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS);
        }
    }
}

impl AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Which interfaces to observe: the ones named on the command line, and
/// optionally every interface a rule gives a hook by its name.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub explicit: Vec<(String, Hook)>,
    /// Follow the interfaces these rules name as they come and go (the
    /// CNIs' devices and pod veths by default).
    pub follow: Option<Rules>,
}

impl Selection {
    /// The interfaces to be attached now, given the ones that exist.
    pub fn wanted(&self, present: &[String]) -> Vec<(String, Hook)> {
        let mut out: Vec<(String, Hook)> = self
            .explicit
            .iter()
            .filter(|(name, _)| present.contains(name))
            .cloned()
            .collect();
        if let Some(rules) = &self.follow {
            for name in present {
                if out.iter().any(|(n, _)| n == name) {
                    continue;
                }
                if let Some(hook) = rules.hook_for(name) {
                    out.push((name.clone(), hook));
                }
            }
        }
        out
    }

    /// Named interfaces that do not exist: an error at start, not later
    /// (a typo must not pass as "waiting for the interface").
    pub fn missing(&self, present: &[String]) -> Vec<String> {
        self.explicit
            .iter()
            .filter(|(n, _)| !present.contains(n))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    /// Interfaces that could not be attached, with the reason; retried on
    /// the next pass.
    pub failed: Vec<(String, String)>,
}

/// Attaches to wanted interfaces we are not on yet and forgets the ones
/// that went away. Idempotent.
pub fn reconcile(observer: &mut Observer, selection: &Selection) -> Result<Reconciled> {
    let present = {
        let _ns = observer.enter_netns()?;
        interfaces()
    };
    let wanted = selection.wanted(&present);
    let mut done = Reconciled::default();
    let current: Vec<(String, Hook)> = observer
        .attached()
        .map(|(n, h)| (n.to_owned(), h))
        .collect();
    for (name, hook) in &current {
        if !wanted.iter().any(|(n, h)| n == name && h == hook) {
            observer.detach(name)?;
            done.detached.push(name.clone());
        }
    }
    for (name, hook) in wanted {
        if current.iter().any(|(n, h)| *n == name && *h == hook) {
            continue;
        }
        match observer.attach(&name, hook) {
            Ok(()) => done.attached.push(name),
            // A veth can vanish between listing and attaching.
            Err(crate::Error::NoInterface(_)) => {}
            Err(err) => done.failed.push((name, err.to_string())),
        }
    }
    Ok(done)
}
