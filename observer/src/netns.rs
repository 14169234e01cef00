//! Entering a named network namespace (`ip netns add NAME`) for the
//! current thread, so one process can observe several lab nodes.
use std::{fs::File, os::fd::AsRawFd};

use crate::{Error, Result};

/// Holds the namespace the thread came from; restores it on drop.
pub struct NetnsGuard {
    previous: File,
}

/// Moves the calling thread into `/run/netns/NAME`.
pub fn enter(name: &str) -> Result<NetnsGuard> {
    let err = |source| Error::Netns {
        name: name.to_owned(),
        source,
    };
    let previous = File::open("/proc/thread-self/ns/net").map_err(err)?;
    let target = File::open(format!("/run/netns/{name}")).map_err(err)?;
    setns(&target).map_err(err)?;
    Ok(NetnsGuard { previous })
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Failing to return would leave this thread in the wrong namespace
        // for everything that follows: abort loudly rather than go on.
        if let Err(err) = setns(&self.previous) {
            panic!("could not return to the original network namespace: {err}");
        }
    }
}
