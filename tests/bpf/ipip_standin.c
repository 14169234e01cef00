// A stand-in for the kernel's ipip driver (Calico's `tunl0` in IPIP
// mode), for a kernel built without it: `ip link add type ipip` fails
// "Unknown device type" here. The lab makes `tunl0` one end of a veth pair
// (`tunl0` <-> `tunl0p`) and attaches two programs:
//
// - ipip_encap, on `tunl0p` ingress: a packet the node routed into `tunl0`
//   comes out here. It gets the outer IPv4 header ipip_tunnel_xmit would
//   write (protocol 4, this node's underlay address to the underlay address
//   of the node owning the inner destination's block, DF set as
//   `pmtudisc` does by default, TTL inherited from the inner packet as a
//   tunnel of `ttl 0` (`inherit`) does, the inner ECN bits copied) and
//   leaves by `eth0` through the normal transmit path
//   (bpf_redirect_neigh): `eth0`'s TC egress hooks see it as they would
//   see a real tunnel's packet.
// - ipip_decap, on `eth0` ingress behind everything else: an IPv4
//   protocol-4 packet from a peer node to this node's underlay address
//   loses its outer header and is handed to `tunl0p`'s egress, so it
//   arrives at `tunl0`'s ingress as ipip_rcv would deliver it; the stack
//   routes it to the pod from there. Everything else passes untouched.
//
// The node's parameters come from a header the lab generates per node
// (tests/src/lab/tunl0.rs), included by name with -include:
//   LOCAL_UNDERLAY   this node's underlay address, host order
//   ETH0_IFINDEX     eth0's ifindex
//   TUNL0P_IFINDEX   tunl0p's ifindex
//   TUNL0_MAC        tunl0's MAC, six bytes in braces
//   POOL_NET, POOL_MASK  the IP pool, host order
//   PEER_CASES       `case BLOCK: return UNDERLAY;` per peer reached
//                    through tunl0 (in CrossSubnet mode only the other
//                    subnet's), BLOCK the
//                    block's network address, UNDERLAY the peer's (host
//                    order): Felix's routes (`BLOCK dev tunl0 onlink via
//                    PEER`), as a table
//   BLOCK_MASK       a block's prefix mask, host order
//   PEER_SOURCES     `case UNDERLAY:` per peer of PEER_CASES
//
// Built with `clang -O2 -g -target bpf`; the few definitions libbpf's
// bpf_helpers.h would give are written here.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define WIRE16(x) __builtin_bswap16(x)
#define WIRE32(x) __builtin_bswap32(x)
#else
#define WIRE16(x) (x)
#define WIRE32(x) (x)
#endif

#define IP_DF 0x4000
#define OUTER_LEN ((int)sizeof(struct iphdr))

static long (*bpf_skb_adjust_room)(struct __sk_buff *skb, __s32 len_diff,
                                   __u32 mode, __u64 flags) =
    (void *)BPF_FUNC_skb_adjust_room;
static long (*bpf_skb_store_bytes)(struct __sk_buff *skb, __u32 offset,
                                   const void *from, __u32 len, __u64 flags) =
    (void *)BPF_FUNC_skb_store_bytes;
static long (*bpf_redirect_neigh)(__u32 ifindex, void *params, int plen,
                                  __u64 flags) =
    (void *)BPF_FUNC_redirect_neigh;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) =
    (void *)BPF_FUNC_redirect;

// The underlay address of the peer whose block holds `inner` (host
// order), 0 for none.
static __always_inline __u32 peer_of(__u32 inner)
{
    if ((inner & POOL_MASK) != POOL_NET)
        return 0;
    switch (inner & BLOCK_MASK) {
        PEER_CASES
    default:
        return 0;
    }
}

// Whether `outer_src` (host order) is a peer node's underlay address.
static __always_inline int from_peer(__u32 outer_src)
{
    switch (outer_src) {
        PEER_SOURCES
        return 1;
    default:
        return 0;
    }
}

static __always_inline __u16 fold(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

SEC("classifier/encap")
int ipip_encap(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != WIRE16(ETH_P_IP))
        return TC_ACT_SHOT;
    struct iphdr *inner = (void *)(eth + 1);
    if ((void *)(inner + 1) > end)
        return TC_ACT_SHOT;
    __u32 peer = peer_of(WIRE32(inner->daddr));
    // A real tunl0 sends nothing but to a peer Felix routed into it.
    if (!peer)
        return TC_ACT_SHOT;
    struct iphdr outer = {
        .version = 4,
        .ihl = 5,
        .tos = inner->tos & 3,
        .tot_len = WIRE16(WIRE16(inner->tot_len) + OUTER_LEN),
        .id = 0,
        .frag_off = WIRE16(IP_DF),
        .ttl = inner->ttl,
        .protocol = IPPROTO_IPIP,
        .check = 0,
        .saddr = WIRE32(LOCAL_UNDERLAY),
        .daddr = WIRE32(peer),
    };
    __u16 *words = (__u16 *)&outer;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < OUTER_LEN / 2; i++)
        sum += words[i];
    outer.check = fold(sum);
    if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
                            BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &outer, OUTER_LEN, 0))
        return TC_ACT_SHOT;
    return bpf_redirect_neigh(ETH0_IFINDEX, 0, 0, 0);
}

SEC("classifier/decap")
int ipip_decap(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != WIRE16(ETH_P_IP))
        return TC_ACT_OK;
    struct iphdr *outer = (void *)(eth + 1);
    if ((void *)(outer + 1) > end)
        return TC_ACT_OK;
    // Options or a fragment: the driver would reassemble or skip them;
    // the stand-in sends neither, so leaves them to the stack.
    if (outer->protocol != IPPROTO_IPIP || outer->ihl != 5 ||
        (outer->frag_off & WIRE16(0x3fff)) ||
        outer->daddr != WIRE32(LOCAL_UNDERLAY))
        return TC_ACT_OK;
    // Only from a peer node. ipip_rcv's fallback device tunl0 (remote
    // any) would take any source; Felix's iptables allow only known
    // nodes' IPIP in (cali-INPUT), which this check stands for.
    if (!from_peer(WIRE32(outer->saddr)))
        return TC_ACT_OK;
    struct iphdr *inner = outer + 1;
    if ((void *)(inner + 1) > end || inner->version != 4)
        return TC_ACT_OK;
    if (bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC, 0))
        return TC_ACT_SHOT;
    const __u8 mac[ETH_ALEN] = TUNL0_MAC;
    if (bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0))
        return TC_ACT_SHOT;
    return bpf_redirect(TUNL0P_IFINDEX, 0);
}

char LICENSE[] SEC("license") = "GPL";
