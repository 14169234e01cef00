// A stand-in for Cilium's TC programs: it ends every packet's journey on
// its hook the way Cilium's programs do, with a final verdict (TC_ACT_OK,
// which is TCX_PASS on TCX) or, as Cilium's BPF host routing does towards
// a pod, a redirect into the pod's namespace (bpf_redirect_peer). Whatever
// runs after it on the same hook never sees the packet. It counts what it saw, so a test can tell "the
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
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) =
    (void *)BPF_FUNC_redirect_peer;

// Index 0: packets this program saw.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} STANDIN_SEEN SEC(".maps");

// Index 0: ifindex of the host side of the pod's veth, whose peer (the
// pod's eth0) cilium_standin_redirect_peer hands every packet to.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} STANDIN_PEER SEC(".maps");

static __always_inline void count(void)
{
    __u32 zero = 0;
    __u64 *seen = bpf_map_lookup_elem(&STANDIN_SEEN, &zero);
    if (seen)
        __sync_fetch_and_add(seen, 1);
}

SEC("classifier/pass")
int cilium_standin(struct __sk_buff *skb)
{
    count();
    return TC_ACT_OK;
}

// Legacy host routing passes a packet up to the stack, which forwards it
// out of the pod's veth; BPF host routing (Cilium's default once
// bpf.hostLegacyRouting is off) redirects it from the device it came in on
// straight into the pod: the host side's egress never runs. Only valid on
// an ingress hook.
SEC("classifier/redirect_peer")
int cilium_standin_redirect_peer(struct __sk_buff *skb)
{
    __u32 zero = 0;
    count();
    __u32 *pod = bpf_map_lookup_elem(&STANDIN_PEER, &zero);
    if (pod && *pod)
        return bpf_redirect_peer(*pod, 0);
    return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
