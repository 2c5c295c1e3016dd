/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tessera fast path: the ONE definition of every map key and value.
 *
 * The Python mirror is src/tessera/datapath/ebpf/layout.py; a unit test
 * compiles this header and compares every size and offset (through the BTF
 * of the object) against it, so change both together.
 *
 * Byte order: every numeric field (ports, VLAN id, EtherType, IPv4
 * addresses, L4 ports, VNI, remote IP) is stored in HOST byte order, so
 * Python writes plain integers and a prefix mask is a plain integer too.
 * MAC addresses are byte arrays in wire order.  The program converts when
 * it parses the packet.
 *
 * Every struct is laid out by hand with explicit padding and no holes: the
 * kernel hashes keys byte by byte, so a hole of uninitialised bytes would
 * make equal keys unequal.
 */
#ifndef TESSERA_FLOW_H
#define TESSERA_FLOW_H

#include <linux/types.h>

#define FLOW_MAX_MASKS 16   /* tuple-space search: masks scanned per packet */
#define FLOW_MAX_ACTIONS 12 /* actions per flow, executed in order */
#define FLOW_MAX_ENTRIES 65536
#define PORT_MAX_ENTRIES 4096 /* the miss tag carries the port in 12 bits */
#define VNI_MAX_ENTRIES 4096
#define FLOOD_MAX_OUTPUTS 64  /* outputs of one flood set */
#define FLOOD_MAX_SETS 4096   /* flood sets alive at once */
#define CT_MAX_ENTRIES 262144 /* tracked connections (LRU: the oldest go first);
				* the default: the loader creates the table the
				* size the agent asks for */
#define CT_NEW_MAX_ENTRIES 65536 /* connections nobody answered yet */

/* ip_frag values */
#define FLOW_FRAG_NONE 0
#define FLOW_FRAG_FIRST 1
#define FLOW_FRAG_LATER 2

/*
 * ct_state bits: what the `conntrack` map said of the packet as it arrived.
 * CT_TRACKED: its port has a zone and the packet has a connection (IPv4
 * TCP or UDP that is not a later fragment, or an ICMP echo request/reply,
 * whose identifier stands for both ports); CT_REPLY: the reversed tuple is
 * committed in that zone, i.e. the packet answers a tracked connection.
 * 0 means the kernel has no say (no zone, or nothing to track).
 */
#define CT_TRACKED 0x01
#define CT_REPLY 0x02
/* On a miss, ct_state rides in the port tag's priority bits (TCI 13-15). */
#define CT_TAG_SHIFT 13

/*
 * ct_value.tcp_flags: the TCP header's flags byte of every packet either
 * way, ORed (bits 0-7), and above it what only the datapath can tell, the
 * direction: the agent's sweep expires a connection nobody answered, or
 * that both ends closed, long before an established one (a full LRU table
 * would otherwise evict the connection used longest ago, whatever it is).
 */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04
#define CT_F_UNREPLIED 0x100 /* nobody answered: the entries of conntrack_new
			      * (an entry of an older program has it clear
			      * wherever it is: taken for answered, the safe
			      * side) */
#define CT_F_FIN_ORIG 0x200  /* FIN from the side that started it */
#define CT_F_FIN_REPLY 0x400 /* FIN from the side that answered */

/*
 * What the simulation may have read of a packet (its FlowMatch).
 * For ARP: ip_src/ip_dst are the sender/target protocol addresses and
 * ip_proto is the low byte of the opcode.  For ICMP: tp_src is the type and
 * tp_dst the code, and icmp_id the identifier of an echo request or reply (0
 * for any other packet): NAT and conntrack key pings by it, as TCP by ports.
 * vlan_id 0 means untagged.  40 bytes, 4-byte aligned.
 */
struct flow_key {
	__u32 in_port;    /*  0: host-local port number (<= 4095) */
	__u8 eth_src[6];  /*  4 */
	__u8 eth_dst[6];  /* 10 */
	__u16 vlan_id;    /* 16: 12-bit VID of the tenant tag, 0 = untagged */
	__u16 eth_type;   /* 18: EtherType after any tenant tag */
	__u32 ip_src;     /* 20 */
	__u32 ip_dst;     /* 24 */
	__u8 ip_proto;    /* 28 */
	__u8 ip_tos;      /* 29 */
	__u8 ip_ttl;      /* 30 */
	__u8 ip_frag;     /* 31: FLOW_FRAG_* */
	__u16 tp_src;     /* 32 */
	__u16 tp_dst;     /* 34 */
	__u16 icmp_id;    /* 36: ICMP echo identifier */
	__u8 ct_state;    /* 38: CT_* bits, looked up in `conntrack` */
	__u8 _pad0;       /* 39: always 0 */
};

#define FLOW_KEY_WORDS (sizeof(struct flow_key) / sizeof(__u32))

/* Key of the `flows` hash map: the mask slot and the key masked by it. */
struct flow_lookup_key {
	__u32 mask_index;    /*  0 */
	struct flow_key key; /*  4 */
};                           /* 44 */

/* Value of the single entry of the `masks` array map. */
struct mask_list {
	__u32 count;  /* slots [0, count) are scanned, in order */
	__u32 active; /* bit i set: slot i holds a mask in use */
	struct flow_key masks[FLOW_MAX_MASKS];
};                    /* 8 + 16 * 40 = 648 */

enum flow_action_type {
	ACT_NONE = 0,
	ACT_SET_ETH_SRC = 1,  /* mac */
	ACT_SET_ETH_DST = 2,  /* mac */
	ACT_DEC_TTL = 3,      /* ttl_dec; a TTL that would reach 0 is a miss */
	ACT_OUTPUT_LOCAL = 4, /* ifindex, flags & ACT_F_PEER */
	ACT_OUTPUT_TUNNEL = 5,/* vni, ip; ifindex or config vxlan */
	ACT_DROP = 6,
	ACT_TO_USERSPACE = 7, /* handled like a miss */
	ACT_FLOOD = 8,        /* ifindex = id of a `flood_sets` entry: emit each output */
	/* NAT rewrites, checksums fixed by the csum helpers (see nat_rewrite()). */
	ACT_SET_IP_SRC = 9,   /* ip */
	ACT_SET_IP_DST = 10,  /* ip */
	ACT_SET_TP_SRC = 11,  /* port; TCP/UDP source port, ICMP echo identifier */
	ACT_SET_TP_DST = 12,  /* port; TCP/UDP destination port */
	/* Commit the packet's connection, as it arrived, in zone `ifindex`:
	 * its reply then has CT_REPLY where that zone is looked up. */
	ACT_CT_COMMIT = 13,
};

/* OUTPUT_LOCAL: ifindex is the host side of a veth whose peer lives in
 * another namespace; deliver straight into the peer with bpf_redirect_peer. */
#define ACT_F_PEER 0x01
/* OUTPUT_TUNNEL: the receiving host commits the packet's connection, as it
 * arrives, in the zone of the port it delivers to.  On the wire it is the
 * VNI's top bit; tunnel keys stay below it. */
#define ACT_F_CT_COMMIT 0x02
#define VNI_COMMIT (1u << 23)

/* `type` is a one-byte bit-field of the enum (not a __u8) so that the enum is in
 * the object's BTF, where the loader checks layout.py's copy of it. */
struct flow_action {
	enum flow_action_type type : 8; /*  0 */
	__u8 flags;      /*  1: ACT_F_* */
	__u8 ttl_dec;    /*  2: DEC_TTL amount */
	__u8 _pad0;      /*  3 */
	__u32 ifindex;   /*  4: OUTPUT_*: target device in the host namespace;
			  *     FLOOD: the flood set id */
	__u32 vni;       /*  8: OUTPUT_TUNNEL: the port's tunnel key (< VNI_COMMIT) */
	__u32 ip;        /* 12: OUTPUT_TUNNEL: the underlay remote; SET_IP_*: the new
			  *     address; IPv4, host order */
	__u8 mac[6];     /* 16: SET_ETH_* */
	__u16 port;      /* 22: SET_TP_*: the new port (or echo id), host order */
};                       /* 24 */

struct flow_value {
	__u64 packets;   /*  0: counters updated atomically by the program */
	__u64 bytes;     /*  8 */
	__u64 last_used; /* 16: bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	__u32 n_actions; /* 24 */
	__u32 tcp_flags; /* 28: OR of the TCP flags (byte 13 of the header) of the
			  *     packets that hit the flow, as OVS's flow stats keep
			  *     them: once a connection's packets stay in the kernel,
			  *     how the agent learns of its FIN or RST.  Set with an
			  *     atomic OR by the program; a replace keeps it. */
	struct flow_action actions[FLOW_MAX_ACTIONS]; /* 32 */
};                       /* 32 + 12 * 24 = 320 */

/*
 * Value of `flood_sets` (key: __u32 set id): a flood wider than a flow's
 * action list.  outputs[] holds only OUTPUT_LOCAL/OUTPUT_TUNNEL actions and
 * each one gets the same packet (rewrites run before the FLOOD action).  A
 * set is written before the first flow naming it and never changed while
 * named: the agent shares one set among flows with equal outputs and deletes
 * it after the last of them.  8 + 64 * 24 = 1544 bytes.
 */
struct flood_set {
	__u32 n_outputs; /* 0: outputs [0, n_outputs) are emitted, in order */
	__u32 flags;     /* 4: reserved, 0 */
	struct flow_action outputs[FLOOD_MAX_OUTPUTS]; /* 8 */
};

/* Value of `ports` (key: ifindex of a bound port in the host namespace). */
struct port_info {
	__u32 port_no; /* the in_port of flows entering here, 1..4095 */
	__u32 flags;   /* reserved, 0 */
};

/*
 * Key of `conntrack` and `conntrack_new`: a connection as its first packet
 * left through a zone (the agent's number for the device that tracks it).
 * Ports in host order; an ICMP echo has its identifier as both ports.
 * 20 bytes.
 */
struct ct_key {
	__u32 zone;    /*  0 */
	__u32 src;     /*  4 */
	__u32 dst;     /*  8 */
	__u16 sport;   /* 12 */
	__u16 dport;   /* 14 */
	__u8 proto;    /* 16 */
	__u8 _pad[3];  /* 17: always 0 */
};

/* Value of `conntrack` and `conntrack_new`. */
struct ct_value {
	__u64 last_used; /* 0: bpf_ktime_get_ns() of the last packet either way */
	__u32 tcp_flags; /* 8: OR of the TCP flags seen either way (FIN, RST ...),
			  *    and the CT_F_* bits */
	__u32 _pad;      /* 12 */
};

/* Value of `vni_ports` (key: VNI = the destination port's tunnel key). */
struct vni_port {
	__u32 ifindex; /* local port device */
	__u32 flags;   /* ACT_F_PEER */
};

/* Value of the single entry of `config`. */
struct dp_config {
	__u32 miss_ifindex;  /* misses are tagged and redirected here; 0 = drop */
	__u32 vxlan_ifindex; /* default device of OUTPUT_TUNNEL */
	__u32 flags;         /* reserved, 0 */
	__u32 _pad;
};

/* Indexes of the per-CPU `stats` array (u64 each); its key type, so that the
 * enum is in the object's BTF (see struct flow_action). */
enum dp_stat {
	STAT_HIT = 0,
	STAT_MISS = 1,
	STAT_DROP = 2,          /* DROP action or empty action list */
	STAT_UNKNOWN_PORT = 3,  /* ingress ifindex not in `ports` */
	STAT_MISS_FAILED = 4,   /* no miss device or tag push failed */
	STAT_INJECT_HIT = 5,
	STAT_INJECT_MISS = 6,   /* reinjected packet still missed: dropped */
	STAT_INJECT_BAD_TAG = 7,
	STAT_TUNNEL_RX = 8,
	STAT_TUNNEL_RX_UNKNOWN = 9,
	STAT_ACTION_ERROR = 10, /* a helper failed while executing actions */
	STAT_FLOOD_MISSING = 11, /* FLOOD named a set that is not in `flood_sets` */
	STAT_MAX = 16,
};

#endif /* TESSERA_FLOW_H */
