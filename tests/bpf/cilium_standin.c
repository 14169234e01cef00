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
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ETH_P_IP_WIRE __builtin_bswap16(ETH_P_IP)
#else
#define ETH_P_IP_WIRE ETH_P_IP
#endif

static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
    (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) =
    (void *)BPF_FUNC_redirect_peer;

// Index 0: packets this program saw; 1: of those, redirected into a pod.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} STANDIN_SEEN SEC(".maps");

// A pod's IPv4 address (as on the wire) -> ifindex of the host side of its
// veth, whose peer (the pod's eth0) cilium_standin_redirect_peer hands the
// pod's packets to: Cilium's endpoint map, reduced.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} STANDIN_PODS SEC(".maps");

static __always_inline void count(__u32 what)
{
    __u64 *n = bpf_map_lookup_elem(&STANDIN_SEEN, &what);
    if (n)
        __sync_fetch_and_add(n, 1);
}

SEC("classifier/pass")
int cilium_standin(struct __sk_buff *skb)
{
    count(0);
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
    count(0);
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != ETH_P_IP_WIRE)
        return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return TC_ACT_OK;
    __u32 daddr = ip->daddr;
    __u32 *pod = bpf_map_lookup_elem(&STANDIN_PODS, &daddr);
    if (!pod)
        return TC_ACT_OK;
    count(1);
    return bpf_redirect_peer(*pod, 0);
}

char LICENSE[] SEC("license") = "GPL";
