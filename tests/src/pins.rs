//! bpffs pin directories for restart tests, removed (with everything
//! pinned in them) on drop.
use std::path::{Path, PathBuf};

use crate::netns::unique;

pub struct TestPins {
    pub path: PathBuf,
}

impl TestPins {
    /// `/sys/fs/bpf/crossover-test-pin-…`, not created yet.
    pub fn new() -> Self {
        crate::require_root();
        ensure_bpffs();
        TestPins {
            path: Path::new("/sys/fs/bpf").join(unique("crossover-test-pin-")),
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
        if let Err(err) = observer::datapath::uninstall(&self.path) {
            eprintln!("cleaning {}: {err}", self.path.display());
        }
    }
}
