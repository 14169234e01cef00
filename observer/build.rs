//! Builds the eBPF object from `observer-ebpf` with the nightly toolchain
//! (bpf-linker must be on PATH: `cargo xtask setup` installs it) and lets
//! the crate embed it.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "observer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
