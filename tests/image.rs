//! The container image: `cargo xtask image` builds it offline with Debian's
//! buildah (the static release binary on `scratch`), and the OCI archive it
//! writes is read back as a runtime would: its config (entrypoint, platform,
//! version label), its filesystem (the binary and nothing else), and the
//! binary run inside that filesystem alone, where a dynamically linked one
//! finds no loader and fails. Needs root (buildah's storage, chroot).
//! Slow the first time: a release build of its own (`--target`, static).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

use crossover_tests::{netns::unique, require_root};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// buildah on a store of its own, removed on drop.
struct Store(PathBuf);

impl Store {
    fn buildah(&self, args: &[&str]) -> String {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(self.0.join("root"))
            .arg("--runroot")
            .arg(self.0.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .expect("running buildah (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "buildah {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .arg("--root")
            .arg(self.0.join("root"))
            .arg("--runroot")
            .arg(self.0.join("run"))
            .args(["--storage-driver", "vfs", "unmount", "--all"])
            .output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `chroot ROOTFS ARGS`: nothing of the host's filesystem is reachable.
fn in_image(rootfs: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .output()
        .unwrap()
}

/// Every path under `dir`, relative.
fn files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.strip_prefix(base).unwrap().display().to_string());
        if path.is_dir() && !path.is_symlink() {
            files(&path, base, out);
        }
    }
}

#[test]
fn the_image_is_the_static_binary_on_scratch() {
    require_root();
    let started = Instant::now();
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["run", "--quiet", "-p", "xtask", "--", "image"])
        .status()
        .unwrap();
    assert!(status.success(), "cargo xtask image failed");
    eprintln!("cargo xtask image took {:.0?}", started.elapsed());
    let archive = workspace().join(format!("target/image/crossover-{VERSION}.oci.tar"));
    assert!(archive.is_file(), "{} missing", archive.display());

    let store = Store(std::env::temp_dir().join(unique("image-test")));
    let source = format!("oci-archive:{}", archive.display());
    let container = store.buildah(&["from", "--pull=never", &source]);
    let inspect: Value =
        serde_json::from_str(&store.buildah(&["inspect", "--type", "container", &container]))
            .unwrap();
    let config = &inspect["OCIv1"];
    assert_eq!(config["architecture"], "amd64", "{config:#}");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/crossover"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["--help"]));
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        VERSION
    );
    // One layer: the binary.
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(1),
        "{config:#}"
    );

    let rootfs = PathBuf::from(store.buildah(&["mount", &container]));
    let mut inside = Vec::new();
    files(&rootfs, &rootfs, &mut inside);
    assert_eq!(inside, ["crossover"], "scratch holds the binary only");

    // Runs with no libc, no loader, no /etc, no /proc.
    let version = in_image(&rootfs, &["/crossover", "--version"]);
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("crossover {VERSION}")
    );
    let help = in_image(&rootfs, &["/crossover", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in ["agent", "probe", "migrate", "report", "loss"] {
        assert!(help.contains(sub), "{help}");
    }

    // A name in /etc/hosts (the kubelet mounts it) resolves without NSS
    // modules: the connection is refused, the name was not the problem.
    std::fs::create_dir(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 localhost agent.test\n").unwrap();
    let loss = in_image(
        &rootfs,
        &["/crossover", "loss", "--agent", "http://agent.test:1"],
    );
    let said =
        String::from_utf8_lossy(&loss.stdout).to_string() + &String::from_utf8_lossy(&loss.stderr);
    assert!(
        said.contains("refused") && !said.to_lowercase().contains("dns"),
        "{said}"
    );
}
