// A stand-in for Cilium's TC programs: it ends every packet's journey on
// its hook the way Cilium's programs do, with a final verdict (TC_ACT_OK,
// which is TCX_PASS on TCX). Whatever runs after it on the same hook never
// sees the packet. It counts what it saw, so a test can tell "the
// stand-in ran and crossover did not" from "nothing ran".
//
// Built by the tests with `clang -O2 -g -target bpf` (tests/src/standin.rs).
// The few definitions libbpf's bpf_helpers.h would give are written here,
// so nothing but clang and the kernel's UAPI headers is needed.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
    (void *)BPF_FUNC_map_lookup_elem;

// Index 0: packets this program saw.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} STANDIN_SEEN SEC(".maps");

SEC("classifier")
int cilium_standin(struct __sk_buff *skb)
{
    __u32 zero = 0;
    __u64 *seen = bpf_map_lookup_elem(&STANDIN_SEEN, &zero);
    if (seen)
        __sync_fetch_and_add(seen, 1);
    return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
