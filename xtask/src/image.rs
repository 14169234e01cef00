//! `cargo xtask image`: the container image, offline. The release
//! `crossover` linked statically against glibc (`+crt-static`; the musl
//! target cannot be downloaded here), alone on `scratch`, built by
//! Debian's buildah without a daemon or a registry, written as an OCI
//! archive: `target/image/crossover-VERSION.oci.tar`.
//!
//! buildah keeps its storage in `target/image/storage` with the vfs
//! driver (plain directories: works wherever overlay mounts are refused,
//! e.g. inside a container; one 20 MB layer costs nothing), so the build
//! touches nothing of the machine's own container storage.
//!
//! Static glibc and NSS: everything the binary does in a cluster uses
//! addresses, not names (the API server from `KUBERNETES_SERVICE_HOST`,
//! agents and probes by pod IP) and looks up no user or group. Names are
//! resolved only for a kubeconfig whose server is a host name; glibc 2.34
//! and later have the `files` and `dns` lookups built in, so /etc/hosts
//! and /etc/resolv.conf (which the kubelet mounts) answer them without NSS
//! modules; other NSS sources (LDAP, systemd-resolved's `resolve`) are not
//! available in the image.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::cargo_with_env;

/// The target named explicitly, so that `+crt-static` reaches the binary
/// and not build scripts or proc macros (which must stay dynamic).
const TARGET: &str = "x86_64-unknown-linux-gnu";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the image build produced.
pub struct Built {
    pub archive: PathBuf,
    pub reference: String,
}

pub fn run() -> Result<()> {
    let built = build()?;
    println!(
        "{}\n  image {} (OCI archive). Load or push it with, e.g.:\n  \
         podman load -i {0}\n  \
         skopeo copy oci-archive:{0} docker://REGISTRY/crossover:{VERSION}\n  \
         then name it in manifests/base/kustomization.yaml (images:).",
        built.archive.display(),
        built.reference
    );
    Ok(())
}

pub fn build() -> Result<Built> {
    let root = workspace_root();
    let binary = static_binary(&root)?;
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir).context("creating target/image")?;
    let archive = dir.join(format!("crossover-{VERSION}.oci.tar"));
    let reference = format!("crossover:{VERSION}");
    let buildah = Buildah::new(&dir.join("storage"));
    let container = buildah.output(&["from", "--pull=never", "scratch"])?;
    let result = (|| {
        buildah.output(&[
            "copy",
            "--chmod",
            "0755",
            &container,
            binary.to_str().context("binary path")?,
            "/crossover",
        ])?;
        buildah.output(&[
            "config",
            "--entrypoint",
            r#"["/crossover"]"#,
            "--cmd",
            r#"["--help"]"#,
            "--workingdir",
            "/",
            "--os",
            "linux",
            "--arch",
            "amd64",
            "--label",
            &format!("org.opencontainers.image.version={VERSION}"),
            "--label",
            "org.opencontainers.image.title=crossover",
            "--label",
            "org.opencontainers.image.description=Loss measurement and gate for live CNI migrations to Cilium",
            &container,
        ])?;
        let _ = std::fs::remove_file(&archive);
        let destination = format!("oci-archive:{}:{reference}", archive.display());
        buildah.output(&[
            "commit",
            "--format",
            "oci",
            "--rm",
            &container,
            &destination,
        ])
    })();
    if result.is_err() {
        let _ = buildah.output(&["rm", &container]);
    }
    result?;
    Ok(Built { archive, reference })
}

/// `cargo build --release` of crossover for [`TARGET`] with `+crt-static`,
/// checked to have no program interpreter (a dynamic binary would fail
/// on `scratch` only at run time).
fn static_binary(root: &Path) -> Result<PathBuf> {
    cargo_with_env(
        &[
            "build",
            "--release",
            "-p",
            "observer",
            "--bin",
            "crossover",
            "--target",
            TARGET,
        ],
        &[(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )],
    )?;
    let binary = root.join(format!("target/{TARGET}/release/crossover"));
    let elf = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    if has_interpreter(&elf)? {
        bail!(
            "{} is dynamically linked (it has a PT_INTERP): it would not start on scratch",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether a 64-bit little-endian ELF asks for a dynamic loader.
fn has_interpreter(elf: &[u8]) -> Result<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let header = elf.get(at..at + 4).context("program header past the end")?;
        if u32::from_le_bytes(header.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// buildah on its own storage (vfs, under `storage`).
pub struct Buildah {
    root: PathBuf,
}

impl Buildah {
    pub fn new(storage: &Path) -> Self {
        Buildah {
            root: storage.to_path_buf(),
        }
    }

    /// Runs buildah; its stdout, trimmed (a container's name, an id).
    pub fn output(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(self.root.join("root"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .context("running buildah (cargo xtask setup installs it)")?;
        if !out.status.success() {
            bail!(
                "buildah {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}
