//! `cargo xtask setup`: idempotent installation of what the project needs.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run as exec;

/// Commands the tests, the demo and the lab run, and the Debian package
/// that provides each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("bridge", "iproute2"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("bpftool", "bpftool"),
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    // promtool checks and unit-tests the shipped rules; the server runs
    // them against the lab's agents (tests/prometheus.rs).
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    // The HTML report's test renders it as a person sees it.
    ("chromium", "chromium"),
    // A font for that browser's text (nothing else on a minimal Debian).
    ("fc-list", "fontconfig"),
    // `cargo xtask image`: the container image, from scratch, offline.
    ("buildah", "buildah"),
    // Builds the Cilium stand-in the hook-order tests attach (tests/bpf/).
    ("clang", "clang"),
    // `cargo xtask bench scale`: the sink's veth on its NAPI thread.
    ("ethtool", "ethtool"),
];

/// Files the tests need that no command stands for, and their package.
const FILES: &[(&str, &str)] = &[(
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "fonts-dejavu-core",
)];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !has_command(cmd))
        .map(|(_, pkg)| *pkg)
        .chain(
            FILES
                .iter()
                .filter(|(file, _)| !Path::new(file).exists())
                .map(|(_, pkg)| *pkg),
        )
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {}", missing.join(" "));
    exec("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        }
        _ => {
            eprintln!("xtask: installing the nightly toolchain");
            exec(
                "rustup",
                &["toolchain", "install", "nightly", "--profile", "minimal"],
            )?;
            nightly_sysroot()
        }
    }
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding rust-src to nightly (for -Z build-std=core)");
    exec(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

/// LLVM major version of the nightly rustc, e.g. 22.
fn nightly_llvm_major() -> Result<u32> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    Ok(version.split('.').next().unwrap_or_default().parse()?)
}

/// bpf-linker must use the same LLVM as the rustc emitting the bitcode.
/// Prebuilt releases cannot be downloaded here, so it is built from
/// crates.io against the nightly toolchain's own libLLVM.
fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker").arg("--version").output();
    if works.is_ok_and(|out| out.status.success()) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            name.starts_with("libLLVM.so.") && name.contains("-rust-") && name.ends_with("-nightly")
        })
        .with_context(|| format!("no libLLVM.so.*-rust-*-nightly in {}", lib.display()))?;
    let prefix = home().join(".local/crossover-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    let major = nightly_llvm_major()?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 2 minutes)"
    );
    let status = Command::new(env!("CARGO"))
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        )
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed");
    }
    Ok(())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| Path::new("/root").to_path_buf(), PathBuf::from)
}
