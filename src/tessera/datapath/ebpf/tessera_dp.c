// SPDX-License-Identifier: Apache-2.0
/*
 * tessera kernel fast path (tc clsact ingress programs).
 *
 *   port_ingress  on every bound port (host side of a VM veth): extract the
 *                 flow key, tuple-space search over the active masks, run
 *                 the flow's actions; on a miss tag the frame with the port
 *                 number and hand it to the agent through the miss device.
 *   inject        on the datapath end of the miss veth: the agent writes a
 *                 simulated packet back with its port tag; pop the tag and
 *                 run the same lookup.  A second miss drops (never loops).
 *   tunnel_rx     on the VXLAN device (external/collect_md): the VNI names
 *                 the destination port; deliver it.  No flow lookup: the
 *                 sending host already simulated the whole path.  With the
 *                 VNI's commit bit, commit its connection there first.
 *
 * Connection tracking: a port with a zone (`port_zones`, by port number)
 * has each packet's reversed tuple looked up in `conntrack` before the flow
 * lookup, and the answer is part of the flow key (ct_state).  A flow that
 * starts connections commits them (ACT_CT_COMMIT), so a new connection
 * through a flow that exists already costs no miss, and its replies find
 * CT_REPLY without the agent.
 *
 * Layouts live in flow.h.  Packet bytes are read with direct packet access
 * and written only through helpers, so no packet pointer is live across a
 * helper that may move the data.
 *
 * Tenant 802.1Q frames: at tc ingress the kernel has already moved the outer
 * tag to skb metadata (skb->vlan_tci); its VID goes into flow_key.vlan_id.
 * On a miss bpf_skb_vlan_push() moves that tenant tag back in band and puts
 * the port tag in metadata, so the agent always reads the port from the
 * outer tag (PACKET_AUXDATA) and finds the tenant tag, if any, in the data.
 * It reinjects with both tags in band, port tag outermost; the inject
 * program pops the port tag and the kernel moves the tenant tag back to
 * metadata, so the second lookup sees exactly what the first one saw.
 * Flows forward tenant tags untouched (no push/pop actions yet).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "flow.h"

#define VLAN_HLEN 4
#define VLAN_VID_MASK 0x0fff
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define L4_PULL_LEN 80 /* Ethernet + one tag + IPv4 with options + 6 bytes of L4 */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FLOW_MAX_ENTRIES);
	/* Elements are RCU-freed, so a packet that holds an old value while the
	 * agent replaces it keeps reading consistent actions. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_lookup_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mask_list);
} masks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FLOOD_MAX_SETS);
	/* RCU-freed like `flows`: a packet that still holds a set the agent
	 * just deleted finishes its flood with the old outputs. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* set id */
	__type(value, struct flood_set);
} flood_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORT_MAX_ENTRIES);
	__type(key, __u32); /* ifindex */
	__type(value, struct port_info);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VNI_MAX_ENTRIES);
	__type(key, __u32); /* VNI */
	__type(value, struct vni_port);
} vni_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PORT_MAX_ENTRIES);
	__type(key, __u32);   /* port number */
	__type(value, __u32); /* conntrack zone of the port's device, 0 = none */
} port_zones SEC(".maps");

/* Connections answered at least once (and those the agent writes). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} conntrack SEC(".maps");

/* Connections nobody answered yet: their own LRU table (see ct_commit()). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_NEW_MAX_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} conntrack_new SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum dp_stat);
	__type(value, __u64);
} stats SEC(".maps");

/* Where the parser found things; offsets are from the Ethernet header. */
struct parse_info {
	__u32 l3_off; /* IPv4 header, 0 when the packet is not IPv4 */
	__u32 tcp_flags; /* byte 13 of a TCP header (FIN, SYN, RST, ...), else 0 */
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 encap_proto;
};

struct arp_eth_ {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

enum { MODE_PORT = 0, MODE_INJECT = 1 };

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &idx);

	if (c)
		*c += 1; /* per-CPU: no atomics needed */
}

static __always_inline struct dp_config *get_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

static __always_inline __u32 be32_bytes(const __u8 *b)
{
	return ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3];
}

/* Fill *key from the packet.  Never fails: fields of headers that are
 * absent or truncated stay zero, and the agent sees the same packet. */
static __always_inline void extract_key(struct __sk_buff *skb, __u32 in_port,
					struct flow_key *key, struct parse_info *pi)
{
	__builtin_memset(key, 0, sizeof(*key));
	pi->l3_off = 0;
	pi->tcp_flags = 0;
	key->in_port = in_port;

	/* Headers of a paged skb may not be in the linear area yet. */
	if (skb->data + L4_PULL_LEN > skb->data_end && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < L4_PULL_LEN ? skb->len : L4_PULL_LEN);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return;
	__builtin_memcpy(key->eth_src, eth->h_source, ETH_ALEN);
	__builtin_memcpy(key->eth_dst, eth->h_dest, ETH_ALEN);

	__u16 proto = bpf_ntohs(eth->h_proto);
	__u32 off = sizeof(*eth);

	/* Only 802.1Q is a VLAN tag.  An 802.1ad S-tag (0x88a8) is an
	 * EtherType with vlan_id 0, as FlowMatch.from_frame reads it: the
	 * receive path moves it to metadata like a C-tag, so look at the
	 * metadata's protocol, and stop there as the agent's parser does. */
	if (skb->vlan_present) {
		if (skb->vlan_proto != bpf_htons(ETH_P_8021Q)) {
			key->eth_type = bpf_ntohs(skb->vlan_proto);
			return;
		}
		key->vlan_id = skb->vlan_tci & VLAN_VID_MASK;
	} else if (proto == ETH_P_8021Q) {
		/* Only reached for a tag the kernel did not move to metadata
		 * (e.g. BPF_PROG_TEST_RUN); treat it the same way. */
		struct vlan_hdr_ *vh = data + off;

		if ((void *)(vh + 1) > data_end) {
			key->eth_type = proto;
			return;
		}
		key->vlan_id = bpf_ntohs(vh->tci) & VLAN_VID_MASK;
		proto = bpf_ntohs(vh->encap_proto);
		off += VLAN_HLEN;
	}
	key->eth_type = proto;

	if (proto == ETH_P_ARP) {
		struct arp_eth_ *arp = data + off;

		if ((void *)(arp + 1) > data_end)
			return;
		key->ip_proto = bpf_ntohs(arp->op) & 0xff;
		key->ip_src = be32_bytes(arp->spa);
		key->ip_dst = be32_bytes(arp->tpa);
		return;
	}
	if (proto != ETH_P_IP)
		return;

	struct iphdr *ip = data + off;

	if ((void *)(ip + 1) > data_end)
		return;
	pi->l3_off = off;
	key->ip_src = bpf_ntohl(ip->saddr);
	key->ip_dst = bpf_ntohl(ip->daddr);
	key->ip_proto = ip->protocol;
	key->ip_tos = ip->tos;
	key->ip_ttl = ip->ttl;

	__u16 frag = bpf_ntohs(ip->frag_off);

	if (frag & IP_OFFSET) {
		key->ip_frag = FLOW_FRAG_LATER;
		return; /* no L4 header in a later fragment */
	}
	if (frag & IP_MF)
		key->ip_frag = FLOW_FRAG_FIRST;

	__u32 ihl = (__u32)ip->ihl * 4;
	__u32 total = bpf_ntohs(ip->tot_len);

	if (ihl < sizeof(*ip) || total < ihl)
		return;

	/* The transport header ends where the IPv4 total length says, not at
	 * the end of the frame: bytes after it are Ethernet padding. */
	__u32 avail = total - ihl;
	__u8 *l4 = (__u8 *)ip + ihl;

	switch (ip->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (avail < 4 || (void *)(l4 + 4) > data_end)
			return;
		key->tp_src = ((__u16)l4[0] << 8) | l4[1];
		key->tp_dst = ((__u16)l4[2] << 8) | l4[3];
		/* The flags of a whole TCP header (14 bytes within the IP total
		 * length and the frame), for the flow's stats; a load when the
		 * byte is past the linear area (IP options in a paged skb). */
		if (ip->protocol == IPPROTO_TCP && avail >= 14) {
			__u8 tf = 0;

			if ((void *)(l4 + 14) <= data_end)
				tf = l4[13];
			else
				bpf_skb_load_bytes(skb, off + ihl + 13, &tf, 1);
			pi->tcp_flags = tf;
		}
		break;
	case IPPROTO_ICMP:
		if (avail < 2 || (void *)(l4 + 2) > data_end)
			return;
		key->tp_src = l4[0]; /* type */
		key->tp_dst = l4[1]; /* code */
		/* echo reply, echo request: the identifier follows the checksum */
		if ((l4[0] == 0 || l4[0] == 8) && avail >= 6 && (void *)(l4 + 6) <= data_end)
			key->icmp_id = ((__u16)l4[4] << 8) | l4[5];
		break;
	}
}

/* The connection of a packet with key *k, in `zone`: as it arrived, or
 * reversed (as its reply carries it).  0 when it has none to track: only
 * IPv4 TCP or UDP that is not a later fragment, and ICMP echoes, whose
 * identifier stands for both ports. */
static __always_inline int ct_tuple(const struct flow_key *k, __u32 zone, int reversed,
				    struct ct_key *ck)
{
	__u16 sport, dport;

	if (k->eth_type != ETH_P_IP || k->ip_frag == FLOW_FRAG_LATER)
		return 0;
	if (k->ip_proto == IPPROTO_TCP || k->ip_proto == IPPROTO_UDP) {
		sport = k->tp_src;
		dport = k->tp_dst;
	} else if (k->ip_proto == IPPROTO_ICMP && (k->tp_src == 0 || k->tp_src == 8)) {
		sport = dport = k->icmp_id;
	} else {
		return 0;
	}
	__builtin_memset(ck, 0, sizeof(*ck));
	ck->zone = zone;
	ck->proto = k->ip_proto;
	ck->src = reversed ? k->ip_dst : k->ip_src;
	ck->dst = reversed ? k->ip_src : k->ip_dst;
	ck->sport = reversed ? dport : sport;
	ck->dport = reversed ? sport : dport;
	return 1;
}

/* An entry hit by a packet: used now, its TCP flags noted. */
static __always_inline void ct_touch(struct ct_value *cv, __u32 tcp_flags)
{
	cv->last_used = bpf_ktime_get_ns();
	if (tcp_flags && (cv->tcp_flags & tcp_flags) != tcp_flags)
		__sync_fetch_and_or(&cv->tcp_flags, tcp_flags);
}

/*
 * The ct_state of a packet (0: its port has no zone, or it has no
 * connection): is it a reply of a connection committed in its port's zone?
 *
 * ct_state_of() and ct_commit() are global functions on purpose: the
 * verifier checks each once, and their results are unknown values to the
 * caller.  Inlined, every outcome of the tuple's branches would be a path
 * of its own through the action loop, beyond its budget of 1M instructions.
 */
__attribute__((noinline)) int ct_state_of(const struct flow_key *key, __u32 tcp_flags)
{
	struct ct_key ck;

	if (!key)
		return 0;

	__u32 port = key->in_port;
	__u32 *zone = bpf_map_lookup_elem(&port_zones, &port);

	if (!zone || !*zone || !ct_tuple(key, *zone, 1, &ck))
		return 0;

	__u32 seen = tcp_flags | (tcp_flags & TCP_FLAG_FIN ? CT_F_FIN_REPLY : 0);
	struct ct_value *cv = bpf_map_lookup_elem(&conntrack, &ck);

	if (cv) {
		if (cv->tcp_flags & CT_F_UNREPLIED) /* written by an older program */
			__sync_fetch_and_and(&cv->tcp_flags, ~CT_F_UNREPLIED);
		ct_touch(cv, seen);
		return CT_TRACKED | CT_REPLY;
	}
	cv = bpf_map_lookup_elem(&conntrack_new, &ck);
	if (!cv)
		return CT_TRACKED;
	if (tcp_flags & TCP_FLAG_RST) { /* refused: answered, never established */
		ct_touch(cv, seen);
		return CT_TRACKED | CT_REPLY;
	}
	/* Its first answer: the connection moves to the table of answered ones. */
	struct ct_value nv = {.last_used = bpf_ktime_get_ns(),
			      .tcp_flags = (cv->tcp_flags | seen) & ~CT_F_UNREPLIED};

	bpf_map_update_elem(&conntrack, &ck, &nv, BPF_NOEXIST);
	bpf_map_delete_elem(&conntrack_new, &ck);
	return CT_TRACKED | CT_REPLY;
}

/* ACT_CT_COMMIT: the packet's connection, as it arrived, in `zone`.
 *
 * A new connection goes to `conntrack_new` and moves to `conntrack` with its
 * first reply (ct_state_of), so a burst of new connections (a scan, a flood,
 * thousands of clients at once) evicts only unanswered ones from its own LRU
 * table, never an idle established connection (Linux's early_drop spares
 * those too).  An RST from the side that started the connection ends it here
 * and now: its entry goes (or is never made).  The other side's RST is only
 * noted (the sweep removes the entry seconds later): replies come from
 * outside the firewall, and an RST there takes no sequence check here, as
 * Linux's conntrack would make. */
__attribute__((noinline)) int ct_commit(const struct flow_key *key, __u32 zone, __u32 tcp_flags)
{
	struct ct_key ck;

	if (!key || !zone || !ct_tuple(key, zone, 0, &ck))
		return 0;
	if (tcp_flags & TCP_FLAG_FIN)
		tcp_flags |= CT_F_FIN_ORIG;

	struct ct_value *cv = bpf_map_lookup_elem(&conntrack, &ck);

	if (cv) {
		if (tcp_flags & TCP_FLAG_RST)
			bpf_map_delete_elem(&conntrack, &ck);
		else
			ct_touch(cv, tcp_flags);
		return 0;
	}
	cv = bpf_map_lookup_elem(&conntrack_new, &ck);
	if (cv) {
		if (tcp_flags & TCP_FLAG_RST)
			bpf_map_delete_elem(&conntrack_new, &ck);
		else
			ct_touch(cv, tcp_flags);
		return 0;
	}
	if (tcp_flags & TCP_FLAG_RST)
		return 0;

	struct ct_value nv = {.last_used = bpf_ktime_get_ns(),
			      .tcp_flags = tcp_flags | CT_F_UNREPLIED};

	return bpf_map_update_elem(&conntrack_new, &ck, &nv, BPF_NOEXIST) ? -1 : 0;
}

/* Tuple-space search: for each active mask, in slot order, mask the key and
 * look it up under that slot.  The first hit wins. */
static __always_inline struct flow_value *flow_lookup(const struct flow_key *key)
{
	__u32 zero = 0;
	struct mask_list *ml = bpf_map_lookup_elem(&masks, &zero);

	if (!ml)
		return NULL;

	__u32 count = ml->count;
	__u32 active = ml->active;
	struct flow_lookup_key lk;
	const __u32 *k = (const __u32 *)key;

	for (__u32 i = 0; i < FLOW_MAX_MASKS; i++) {
		if (i >= count)
			break;
		if (!(active & (1U << i)))
			continue;

		const __u32 *m = (const __u32 *)&ml->masks[i];
		__u32 *o = (__u32 *)&lk.key;

		lk.mask_index = i;
#pragma unroll
		for (__u32 w = 0; w < FLOW_KEY_WORDS; w++)
			o[w] = k[w] & m[w];

		struct flow_value *fv = bpf_map_lookup_elem(&flows, &lk);

		if (fv)
			return fv;
	}
	return NULL;
}

/* Hand the packet to the agent: port tag outermost, redirect to the miss
 * device.  The tag is written in band for untagged frames (so the kernel
 * moves it to metadata on the other end, and BPF_PROG_TEST_RUN can see it);
 * a tenant tag in metadata is pushed in band by bpf_skb_vlan_push. */
static __always_inline int send_miss(struct __sk_buff *skb, __u32 in_port, __u8 ct_state)
{
	struct dp_config *cfg = get_config();
	__u32 ifindex = cfg ? cfg->miss_ifindex : 0;

	if (!ifindex || in_port == 0 || in_port > VLAN_VID_MASK)
		goto fail;

	__u16 tci = in_port | ((__u16)(ct_state & 0x7) << CT_TAG_SHIFT);

	if (skb->vlan_present) {
		if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), tci))
			goto fail;
	} else {
		__u8 macs[2 * ETH_ALEN];
		struct vlan_hdr_ tag = {
			.tci = bpf_htons(ETH_P_8021Q), /* TPID */
			.encap_proto = bpf_htons(tci), /* TCI */
		};

		if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)))
			goto fail;
		if (bpf_skb_change_head(skb, VLAN_HLEN, 0))
			goto fail;
		if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
			goto fail;
		if (bpf_skb_store_bytes(skb, 2 * ETH_ALEN, &tag, sizeof(tag), 0))
			goto fail;
	}
	stat_inc(STAT_MISS);
	return bpf_redirect(ifindex, 0);
fail:
	stat_inc(STAT_MISS_FAILED);
	return TC_ACT_SHOT;
}

static __always_inline int miss(struct __sk_buff *skb, __u32 in_port, __u8 ct_state, int mode)
{
	if (mode == MODE_INJECT) {
		stat_inc(STAT_INJECT_MISS);
		return TC_ACT_SHOT;
	}
	return send_miss(skb, in_port, ct_state);
}

/* Decrement the IPv4 TTL by n and fix the header checksum.  Returns 1 when
 * the TTL would reach zero (ttl_verdict() rules that out), <0 on error. */
static __always_inline int dec_ttl(struct __sk_buff *skb, __u32 l3_off, __u8 n)
{
	__be16 old, new;

	if (!l3_off)
		return -1;
	/* TTL and protocol share the 16-bit word at offset 8. */
	if (bpf_skb_load_bytes(skb, l3_off + 8, &old, sizeof(old)))
		return -1;
	__u8 ttl = ((__u8 *)&old)[0];

	if (ttl <= n)
		return 1;
	new = old;
	((__u8 *)&new)[0] = ttl - n;
	if (bpf_l3_csum_replace(skb, l3_off + 10, old, new, sizeof(new)))
		return -1;
	if (bpf_skb_store_bytes(skb, l3_off + 8, &new, sizeof(new), 0))
		return -1;
	return 0;
}

/*
 * NAT: one SET_IP_* or SET_TP_* action (`type`, the new address or port in
 * host order).  0 when done (or nothing to do), <0 when the packet is not
 * IPv4 (a broken flow: dropped) or a helper failed.  The same rules as
 * frames.nat() in Python:
 *
 *   - the L4 header is used only in a first or only fragment, for TCP, UDP
 *     and ICMP, and only when its minimum length fits the IPv4 total length;
 *   - an address change fixes the IPv4 header checksum and, for TCP and UDP,
 *     the L4 checksum through its pseudo-header (ICMP has none);
 *   - a UDP checksum of 0 ("none") stays 0, a result of 0 becomes 0xffff
 *     (BPF_F_MARK_MANGLED_0);
 *   - SET_TP_SRC/DST rewrite TCP/UDP ports; SET_TP_SRC rewrites the identifier
 *     of an ICMP echo request or reply (NAT translates echoes by id), and
 *     anything else is left alone: no port without an L4 header.
 *
 * Global, so the verifier walks it once rather than once per action slot.
 * Packet bytes only through helpers: the csum helpers also keep a
 * CHECKSUM_PARTIAL or CHECKSUM_COMPLETE skb consistent.
 */
__attribute__((noinline)) int nat_rewrite(struct __sk_buff *skb, __u32 l3_off, __u32 type,
					  __u32 value)
{
	struct iphdr ip;
	__u32 l4_off = 0, csum_off = 0;
	__u64 l4_flags = 0;
	__u8 proto;

	if (!l3_off || l3_off > 64)
		return -1;
	if (bpf_skb_load_bytes(skb, l3_off, &ip, sizeof(ip)))
		return -1;
	proto = ip.protocol;

	__u32 ihl = (__u32)ip.ihl * 4;
	__u32 total = bpf_ntohs(ip.tot_len);

	if (!(bpf_ntohs(ip.frag_off) & IP_OFFSET) && ihl >= sizeof(ip) && total >= ihl) {
		__u32 avail = total - ihl;

		l4_off = l3_off + ihl;
		if (proto == IPPROTO_TCP && avail >= 20) {
			csum_off = l4_off + 16;
			l4_flags = BPF_F_PSEUDO_HDR;
		} else if (proto == IPPROTO_UDP && avail >= 8) {
			csum_off = l4_off + 6;
			l4_flags = BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0;
		} else if (proto == IPPROTO_ICMP && avail >= 8) {
			csum_off = l4_off + 2;
		}
		/* ... and within the frame, as the helpers would refuse otherwise. */
		if (csum_off && l4_off + (proto == IPPROTO_TCP ? 20 : 8) > skb->len)
			csum_off = 0;
	}

	if (type == ACT_SET_IP_SRC || type == ACT_SET_IP_DST) {
		__u32 off = l3_off + (type == ACT_SET_IP_SRC ? 12 : 16);
		__be32 old = type == ACT_SET_IP_SRC ? ip.saddr : ip.daddr;
		__be32 new = bpf_htonl(value);

		if (csum_off && proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum_off, old, new, l4_flags | sizeof(new)))
			return -1;
		if (bpf_l3_csum_replace(skb, l3_off + 10, old, new, sizeof(new)))
			return -1;
		return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0) ? -1 : 0;
	}

	__u32 off;

	if (!csum_off)
		return 0; /* no L4 header to rewrite */
	if (proto == IPPROTO_ICMP) {
		__u8 icmp_type;

		if (type != ACT_SET_TP_SRC)
			return 0;
		if (bpf_skb_load_bytes(skb, l4_off, &icmp_type, 1))
			return -1;
		if (icmp_type != 0 && icmp_type != 8) /* echo reply, echo request */
			return 0;
		off = l4_off + 4; /* the echo identifier */
	} else {
		off = l4_off + (type == ACT_SET_TP_SRC ? 0 : 2);
	}

	__be16 old_port, new_port = bpf_htons((__u16)value);

	if (bpf_skb_load_bytes(skb, off, &old_port, sizeof(old_port)))
		return -1;
	/* A port is not in the pseudo-header. */
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
				(l4_flags & BPF_F_MARK_MANGLED_0) | sizeof(new_port)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_port, sizeof(new_port), 0) ? -1 : 0;
}

/* Verdicts of emit()/flood() besides a TC_ACT_* of a last output. */
#define OUT_CONTINUE (-1) /* a copy went out; keep working on the original */
#define OUT_ERROR (-2)

static __always_inline int output(struct __sk_buff *skb, __u32 ifindex, __u8 flags, int last)
{
	if (last) {
		if (flags & ACT_F_PEER)
			return bpf_redirect_peer(ifindex, 0);
		return bpf_redirect(ifindex, 0);
	}
	/* Not the last output: send a copy, keep working on the original. */
	if (bpf_clone_redirect(skb, ifindex, 0))
		stat_inc(STAT_ACTION_ERROR);
	return OUT_CONTINUE;
}

static __always_inline int set_tunnel(struct __sk_buff *skb, const struct flow_action *a)
{
	struct bpf_tunnel_key tk = {};

	tk.tunnel_id = a->flags & ACT_F_CT_COMMIT ? a->vni | VNI_COMMIT : a->vni;
	tk.remote_ipv4 = a->ip; /* the helper wants host order */
	tk.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), BPF_F_ZERO_CSUM_TX);
}

/* One OUTPUT_LOCAL or OUTPUT_TUNNEL: the verdict when `last` (the packet
 * itself is redirected), else OUT_CONTINUE after sending a clone.  Each
 * tunnel output sets its own tunnel key just before its copy leaves. */
static __always_inline int emit(struct __sk_buff *skb, const struct flow_action *a, int last)
{
	__u32 ifindex = a->ifindex;
	__u8 flags = a->flags;

	if (a->type == ACT_OUTPUT_TUNNEL) {
		struct dp_config *cfg = get_config();

		if (!ifindex && cfg)
			ifindex = cfg->vxlan_ifindex;
		if (!ifindex || set_tunnel(skb, a))
			return OUT_ERROR;
		flags = 0;
	} else if (a->type != ACT_OUTPUT_LOCAL) {
		return OUT_ERROR;
	}
	return output(skb, ifindex, flags, last);
}

/* Output j of flood set set_id (see flood()).  Global, so the verifier
 * checks it once instead of once per step of the caller's loop; it looks
 * the set up again because a global function cannot take a map value. */
__attribute__((noinline)) int flood_emit(struct __sk_buff *skb, __u32 set_id, __u32 j, int last)
{
	struct flood_set *fs = bpf_map_lookup_elem(&flood_sets, &set_id);

	if (!fs || j >= FLOOD_MAX_OUTPUTS)
		return OUT_ERROR;
	return emit(skb, &fs->outputs[j], last);
}

/* ACT_FLOOD: emit every output of the set, cloning for all but the last
 * when the flood ends the flow.  A broken output (say, a tunnel without a
 * device) is counted and skipped: the other ports still get their copy.
 *
 * Global functions on purpose: inlined, the 64-step loop with the branches
 * of emit() in it would be walked again for every path through the 12-step
 * action loop, beyond the verifier's budget of 1M instructions. */
__attribute__((noinline)) int flood(struct __sk_buff *skb, __u32 set_id, int last)
{
	struct flood_set *fs = bpf_map_lookup_elem(&flood_sets, &set_id);

	if (!fs) {
		stat_inc(STAT_FLOOD_MISSING);
		return OUT_ERROR;
	}

	__u32 n = fs->n_outputs;

	for (__u32 j = 0; j < FLOOD_MAX_OUTPUTS; j++) {
		if (j >= n)
			break;

		int final = last && j + 1 == n;
		int rc = flood_emit(skb, set_id, j, final);

		if (final)
			return rc;
		if (rc == OUT_ERROR)
			stat_inc(STAT_ACTION_ERROR);
	}
	return OUT_CONTINUE;
}

/* Whether the flow may run on this packet at all: 0 to go on, else the
 * verdict.  A flow that decrements the TTL runs all or nothing: when the
 * decrements add up to the TTL the packet arrived with (so some DEC_TTL
 * would take it to zero) the agent gets the packet untouched, before any
 * rewrite or output, and answers ICMP time exceeded; a flow that
 * decrements the TTL of a packet without one is broken and drops it. */
static __always_inline int ttl_verdict(struct __sk_buff *skb, const struct flow_value *fv,
				       const struct parse_info *pi, const struct flow_key *key,
				       int mode)
{
	__u32 n = fv->n_actions;
	__u32 dec = 0;

	for (__u32 i = 0; i < FLOW_MAX_ACTIONS; i++) {
		if (i >= n)
			break;
		if (fv->actions[i].type == ACT_DEC_TTL)
			dec += fv->actions[i].ttl_dec;
	}
	if (!dec)
		return 0;
	if (!pi->l3_off) {
		stat_inc(STAT_ACTION_ERROR);
		return TC_ACT_SHOT;
	}
	if (dec >= key->ip_ttl)
		return miss(skb, key->in_port, key->ct_state, mode);
	return 0;
}

/* Execute the flow's actions in order.  The last action, if an output, is a
 * plain redirect; earlier outputs clone.  Falling off the end drops the
 * original (its copies are already on their way). */
static __always_inline int run_actions(struct __sk_buff *skb, struct flow_value *fv,
				       const struct parse_info *pi, const struct flow_key *key,
				       int mode)
{
	__u32 n = fv->n_actions;
	int verdict = ttl_verdict(skb, fv, pi, key, mode);

	if (verdict)
		return verdict;
	for (__u32 i = 0; i < FLOW_MAX_ACTIONS; i++) {
		if (i >= n)
			break;

		const struct flow_action *a = &fv->actions[i];
		int last = i + 1 == n;
		int rc;

		switch (a->type) {
		case ACT_SET_ETH_SRC:
			if (bpf_skb_store_bytes(skb, ETH_ALEN, a->mac, ETH_ALEN, 0))
				goto error;
			break;
		case ACT_SET_ETH_DST:
			if (bpf_skb_store_bytes(skb, 0, a->mac, ETH_ALEN, 0))
				goto error;
			break;
		case ACT_DEC_TTL:
			/* ttl_verdict() saw every decrement fit the TTL. */
			if (dec_ttl(skb, pi->l3_off, a->ttl_dec))
				goto error;
			break;
		case ACT_OUTPUT_LOCAL:
		case ACT_OUTPUT_TUNNEL:
			rc = emit(skb, a, last);
			if (rc == OUT_ERROR)
				goto error;
			if (last)
				return rc;
			break;
		case ACT_FLOOD:
			rc = flood(skb, a->ifindex, last);
			if (rc == OUT_ERROR)
				goto error;
			if (rc != OUT_CONTINUE)
				return rc;
			break;
		case ACT_SET_IP_SRC:
			if (nat_rewrite(skb, pi->l3_off, ACT_SET_IP_SRC, a->ip))
				goto error;
			break;
		case ACT_SET_IP_DST:
			if (nat_rewrite(skb, pi->l3_off, ACT_SET_IP_DST, a->ip))
				goto error;
			break;
		case ACT_SET_TP_SRC:
			if (nat_rewrite(skb, pi->l3_off, ACT_SET_TP_SRC, a->port))
				goto error;
			break;
		case ACT_SET_TP_DST:
			if (nat_rewrite(skb, pi->l3_off, ACT_SET_TP_DST, a->port))
				goto error;
			break;
		case ACT_CT_COMMIT:
			ct_commit(key, a->ifindex, pi->tcp_flags);
			break;
		case ACT_DROP:
			stat_inc(STAT_DROP);
			return TC_ACT_SHOT;
		case ACT_TO_USERSPACE:
			return miss(skb, key->in_port, key->ct_state, mode);
		default:
			break;
		}
	}
	if (n == 0)
		stat_inc(STAT_DROP);
	return TC_ACT_SHOT;
error:
	stat_inc(STAT_ACTION_ERROR);
	return TC_ACT_SHOT;
}

static __always_inline int process(struct __sk_buff *skb, __u32 in_port, int mode)
{
	struct flow_key key;
	struct parse_info pi;

	extract_key(skb, in_port, &key, &pi);
	key.ct_state = ct_state_of(&key, pi.tcp_flags);

	struct flow_value *fv = flow_lookup(&key);

	if (!fv)
		return miss(skb, in_port, key.ct_state, mode);

	/* Bytes as on the wire: a tag the kernel moved to metadata counts. */
	__u32 len = skb->len + (skb->vlan_present ? VLAN_HLEN : 0);

	__sync_fetch_and_add(&fv->packets, 1);
	__sync_fetch_and_add(&fv->bytes, len);
	fv->last_used = bpf_ktime_get_ns();
	/* Read first: the flags of a connection are all set after a few packets, so
	 * most packets write nothing more than the counters. */
	if (pi.tcp_flags && (fv->tcp_flags & pi.tcp_flags) != pi.tcp_flags)
		__sync_fetch_and_or(&fv->tcp_flags, pi.tcp_flags);
	stat_inc(mode == MODE_INJECT ? STAT_INJECT_HIT : STAT_HIT);
	return run_actions(skb, fv, &pi, &key, mode);
}

static __always_inline int do_port_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct port_info *port = bpf_map_lookup_elem(&ports, &ifindex);

	if (!port) {
		stat_inc(STAT_UNKNOWN_PORT);
		return TC_ACT_SHOT;
	}
	return process(skb, port->port_no, MODE_PORT);
}

static __always_inline int do_inject(struct __sk_buff *skb)
{
	__u32 port;

	if (skb->vlan_present) {
		port = skb->vlan_tci & VLAN_VID_MASK;
	} else {
		struct vlan_hdr_ tag;

		if (bpf_skb_load_bytes(skb, 2 * ETH_ALEN, &tag, sizeof(tag)) ||
		    tag.tci != bpf_htons(ETH_P_8021Q))
			goto bad;
		port = bpf_ntohs(tag.encap_proto) & VLAN_VID_MASK;
	}
	if (port == 0 || bpf_skb_vlan_pop(skb))
		goto bad;
	return process(skb, port, MODE_INJECT);
bad:
	stat_inc(STAT_INJECT_BAD_TAG);
	return TC_ACT_SHOT;
}

/* A tunnelled packet whose sender asked for it (VNI_COMMIT): its connection,
 * as it arrives, committed in the zone of local port device `ifindex`, where
 * its replies will be looked up.  Global for the same reason as ct_commit(). */
__attribute__((noinline)) int tunnel_commit(struct __sk_buff *skb, __u32 ifindex)
{
	struct flow_key key;
	struct parse_info pi;

	if (!skb)
		return 0;

	struct port_info *port = bpf_map_lookup_elem(&ports, &ifindex);

	if (!port)
		return 0;

	__u32 port_no = port->port_no;
	__u32 *zone = bpf_map_lookup_elem(&port_zones, &port_no);

	if (!zone || !*zone)
		return 0;
	extract_key(skb, port_no, &key, &pi);
	return ct_commit(&key, *zone, pi.tcp_flags);
}

static __always_inline int do_tunnel_rx(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tk = {};

	if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0))
		goto unknown;

	__u32 vni = tk.tunnel_id & ~VNI_COMMIT;
	struct vni_port *vp = bpf_map_lookup_elem(&vni_ports, &vni);

	if (!vp)
		goto unknown;
	stat_inc(STAT_TUNNEL_RX);
	if (tk.tunnel_id & VNI_COMMIT)
		tunnel_commit(skb, vp->ifindex);
	if (vp->flags & ACT_F_PEER)
		return bpf_redirect_peer(vp->ifindex, 0);
	return bpf_redirect(vp->ifindex, 0);
unknown:
	stat_inc(STAT_TUNNEL_RX_UNKNOWN);
	return TC_ACT_SHOT;
}

SEC("tc")
int port_ingress(struct __sk_buff *skb)
{
	return do_port_ingress(skb);
}

SEC("tc")
int inject(struct __sk_buff *skb)
{
	return do_inject(skb);
}

SEC("tc")
int tunnel_rx(struct __sk_buff *skb)
{
	return do_tunnel_rx(skb);
}
