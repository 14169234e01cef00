//! crossover's TC programs. Built for `bpfel-unknown-none` by observer's
//! build script; on any other target this binary only explains that.
//!
//! Every program is passive: it reads the packet, counts, and returns
//! "next" so whatever else is attached to the hook (Cilium's own programs,
//! other TCX links) runs as if crossover were not there.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// 64-bit atomic add for shared flow counters; see flow::add64.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod frag;
#[cfg(target_arch = "bpf")]
mod handshake;
#[cfg(target_arch = "bpf")]
mod hooks;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is no
    // unwinding in BPF.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "observer-ebpf is the eBPF object: it is built for bpfel-unknown-none by \
         observer's build script and embedded in the `crossover` binary"
    );
    std::process::exit(2);
}
