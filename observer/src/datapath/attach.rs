//! Attaching beside whatever else is on a hook. TCX (Linux 6.6+) puts us
//! first in its chain; older kernels get a cls_bpf filter on clsact. Either
//! way the program returns "next", so Cilium's programs still run.
use std::{io, process::Command};

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};

use super::Hook;
use crate::{Error, Result, error::root_io_error};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), netlink clsact otherwise.
    #[default]
    Auto,
    Tcx,
    Netlink,
}

impl AttachMode {
    pub(crate) fn resolve(self) -> AttachMode {
        match self {
            AttachMode::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
                _ => AttachMode::Netlink,
            },
            mode => mode,
        }
    }
}

/// What we put on one interface, so it can be taken off again exactly.
pub(crate) struct Attachment {
    pub hook: Hook,
    pub links: Vec<(&'static str, SchedClassifierLinkId)>,
    /// We added the clsact qdisc and must remove it when we leave.
    pub owns_clsact: bool,
}

pub(crate) fn attach_one(
    program: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    direction: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLinkId> {
    let options = match mode {
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        _ => TcAttachOptions::TcxOrder(LinkOrder::first()),
    };
    program
        .attach_with_options(iface, direction, options)
        .map_err(|source| {
            if root_io_error(&source).is_some_and(|e| e.raw_os_error() == Some(libc::ENODEV)) {
                Error::NoInterface(iface.to_owned())
            } else if let Some(io) =
                root_io_error(&source).filter(|e| crate::error::is_permission(e))
            {
                Error::Privilege {
                    action: format!("attaching {name} to {iface}"),
                    source: io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(libc::EPERM)),
                }
            } else {
                Error::Attach {
                    program: name.to_owned(),
                    iface: iface.to_owned(),
                    source: Box::new(source),
                }
            }
        })
}

/// Adds clsact unless present; true when this call created it.
pub(crate) fn ensure_clsact(iface: &str) -> Result<bool> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(true),
        Err(err) => match root_io_error(&err).and_then(|e| e.raw_os_error()) {
            Some(libc::EEXIST) => Ok(false),
            Some(libc::ENODEV) => Err(Error::NoInterface(iface.to_owned())),
            _ => Err(Error::io(
                format!("adding clsact to {iface}"),
                io::Error::other(err.to_string()),
            )),
        },
    }
}

/// Removes the clsact qdisc we added (aya has no call for it).
pub(crate) fn remove_clsact(iface: &str) -> Result<()> {
    let status = Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .status()
        .map_err(|e| Error::io(format!("running tc to remove clsact from {iface}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!("removing clsact from {iface}"),
            io::Error::other(format!("tc exited with {status}")),
        ))
    }
}
