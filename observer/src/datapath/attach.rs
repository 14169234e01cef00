//! Attaching beside whatever else is on a hook. TCX (Linux 6.6+) puts us
//! first in its chain; older kernels get a cls_bpf filter on clsact at
//! Cilium's priority, where the newest filter runs first (see order.rs).
//! Either way the program returns "next", so Cilium's programs still run.
use std::{fs, io, path::PathBuf, process::Command};

use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        },
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
    pub links: Vec<(&'static str, Held)>,
    /// We added the clsact qdisc and must remove it when we leave.
    pub owns_clsact: bool,
}

/// One program on one hook.
pub(crate) enum Held {
    /// Owned by the program: detached when it is, or when it is dropped.
    Owned(SchedClassifierLinkId),
    /// A TCX link pinned in bpffs: stays attached, running whatever
    /// program was last swapped into it, until the pin is removed. The fd
    /// is only this process's handle on it.
    Pinned { link: FdLink, path: PathBuf },
    /// Taken off for the moment of a re-attachment (order.rs).
    Detached,
}

/// Moves a just-attached TCX link out of the program (which would detach
/// it on drop) into a pin at `path`.
pub(crate) fn pin(
    program: &mut SchedClassifier,
    name: &str,
    id: SchedClassifierLinkId,
    path: PathBuf,
) -> Result<Held> {
    let link = program
        .take_link(id)
        .map_err(|e| fail(format!("taking the link of {name}"), &e))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e| fail(format!("link of {name} is not a TCX link"), &e))?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    // On failure the link is dropped, which detaches it: nothing is left
    // attached that the pins do not know about.
    let pinned = link
        .pin(&path)
        .map_err(|e| fail(format!("pinning {}", path.display()), &e))?;
    Ok(Held::Pinned {
        link: pinned.into(),
        path,
    })
}

/// Swaps `program` into the TCX link pinned at `path` (`BPF_LINK_UPDATE`,
/// atomic: the hook never runs neither or both).
pub(crate) fn adopt(program: &mut SchedClassifier, name: &str, path: PathBuf) -> Result<Held> {
    let pinned = PinnedLink::from_pin(&path)
        .map_err(|e| fail(format!("opening pinned link {}", path.display()), &e))?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
        .map_err(|e| fail(format!("pinned link {}", path.display()), &e))?;
    let id = program
        .attach_to_link(link)
        .map_err(|e| fail(format!("replacing the program of {}", path.display()), &e))?;
    let link = program
        .take_link(id)
        .map_err(|e| fail(format!("taking the link of {name}"), &e))?;
    let link: FdLink = link
        .try_into()
        .map_err(|e| fail(format!("link of {name}"), &e))?;
    Ok(Held::Pinned { link, path })
}

/// Priority of crossover's cls_bpf filters: Cilium's (1, the lowest number
/// that is not "pick one for me"). Within one priority cls_bpf runs the
/// filters newest first, so ours, added after Cilium's, runs before it; and
/// Cilium replaces its filter in place on restart, which keeps that order.
pub(crate) const FILTER_PRIORITY: u16 = 1;
/// Handle of crossover's filters within [`FILTER_PRIORITY`]: not Cilium's
/// (1), whose in-place replacement must not hit ours.
pub(crate) const FILTER_HANDLE: u32 = 0xc055;

pub(crate) fn attach_one(
    program: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    direction: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLinkId> {
    let options = || match mode {
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions {
            priority: FILTER_PRIORITY,
            handle: TcHandle::from(FILTER_HANDLE),
            ..NlOptions::default()
        }),
        _ => TcAttachOptions::TcxOrder(LinkOrder::first()),
    };
    let mut attached = program.attach_with_options(iface, direction, options());
    let errno = |attached: &std::result::Result<_, ProgramError>| {
        attached
            .as_ref()
            .err()
            .and_then(|err| root_io_error(err))
            .and_then(|e| e.raw_os_error())
    };
    if mode == AttachMode::Netlink && errno(&attached) == Some(libc::EEXIST) {
        // A filter with our handle: left by a crossover that was killed
        // (netlink filters do not outlive a clean exit). Replace it.
        remove_filter(iface, direction)?;
        attached = program.attach_with_options(iface, direction, options());
    }
    if mode == AttachMode::Netlink && errno(&attached) == Some(libc::EINVAL) {
        // Priority 1 holds filters of another kind or protocol: one
        // priority takes one of each. Attach where the kernel puts us,
        // behind them; the order check reports the hook blind.
        attached = program.attach_with_options(
            iface,
            direction,
            TcAttachOptions::Netlink(NlOptions::default()),
        );
    }
    attached.map_err(|source| {
        if root_io_error(&source).is_some_and(|e| e.raw_os_error() == Some(libc::ENODEV)) {
            Error::NoInterface(iface.to_owned())
        } else if let Some(io) = root_io_error(&source).filter(|e| crate::error::is_permission(e)) {
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

fn fail(what: String, e: &dyn std::fmt::Display) -> Error {
    Error::io(what, io::Error::other(e.to_string()))
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

/// Deletes the filter at crossover's priority and handle on `iface`.
fn remove_filter(iface: &str, direction: TcAttachType) -> Result<()> {
    let parent = super::direction_label(direction);
    let (priority, handle) = (FILTER_PRIORITY.to_string(), format!("{FILTER_HANDLE:#x}"));
    tc(
        &[
            "filter", "del", "dev", iface, parent, "pref", &priority, "handle", &handle, "bpf",
        ],
        &format!("removing the stale crossover filter of {iface} {parent}"),
    )
}

/// Removes the clsact qdisc we added (aya has no call for it).
pub(crate) fn remove_clsact(iface: &str) -> Result<()> {
    tc(
        &["qdisc", "del", "dev", iface, "clsact"],
        &format!("removing clsact from {iface}"),
    )
}

/// Runs `tc` with `args`; an error says what it was `doing`.
fn tc(args: &[&str], doing: &str) -> Result<()> {
    let status = Command::new("tc")
        .args(args)
        .status()
        .map_err(|e| Error::io(format!("running tc for {doing}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::io(
            doing.to_owned(),
            io::Error::other(format!("tc exited with {status}")),
        ))
    }
}
