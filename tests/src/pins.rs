//! bpffs pin directories for restart tests, removed (with everything
//! pinned in them) on drop.
use std::path::{Path, PathBuf};

use crate::netns::unique;

pub struct TestPins {
    pub path: PathBuf,
    /// A bpffs of the test's own, unmounted on drop.
    mount: Option<PathBuf>,
}

impl TestPins {
    /// `/sys/fs/bpf/crossover-test-pin-…`, not created yet.
    pub fn new() -> Self {
        crate::require_root();
        ensure_bpffs();
        TestPins {
            path: Path::new("/sys/fs/bpf").join(unique("crossover-test-pin-")),
            mount: None,
        }
    }

    /// Pins on a bpffs mounted under /run. `ip netns exec` mounts a fresh
    /// /sys for the command, which hides /sys/fs/bpf; processes started in
    /// a lab node that way still see this one.
    pub fn outside_sys() -> Self {
        crate::require_root();
        let mount = Path::new("/run").join(unique("crossover-test-bpffs-"));
        std::fs::create_dir_all(&mount).expect("creating the bpffs mount point");
        crate::netns::sh(&["mount", "-t", "bpf", "bpf", mount.to_str().expect("utf-8")]);
        TestPins {
            path: mount.join("crossover"),
            mount: Some(mount),
        }
    }
}

/// Mounts bpffs on /sys/fs/bpf where the machine has not (systemd does it
/// on most distributions; a bare VM or CI runner may not). Never mounts
/// over an existing bpffs, which would hide its pins.
fn ensure_bpffs() {
    let fs_type = crate::netns::sh(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"]);
    if fs_type.trim() != "bpf_fs" {
        crate::netns::sh(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
}

impl Default for TestPins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = match std::fs::read_dir(&self.path) {
            // One pin directory per lab node, or this one.
            Ok(entries) if self.mount.is_some() => entries.flatten().map(|e| e.path()).collect(),
            _ => vec![self.path.clone()],
        };
        for dir in dirs {
            if let Err(err) = observer::datapath::uninstall(&dir) {
                eprintln!("cleaning {}: {err}", dir.display());
            }
        }
        if let Some(mount) = &self.mount {
            let _ = std::process::Command::new("umount").arg(mount).status();
            let _ = std::fs::remove_dir(mount);
        }
    }
}
