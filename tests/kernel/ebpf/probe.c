// SPDX-License-Identifier: Apache-2.0
/*
 * Test harness: the real program plus probes that record what BPF_PROG_TEST_RUN
 * cannot return (the extracted key, skb VLAN metadata, the tunnel key).
 * Built only by the tests.
 */
#include "tessera_dp.c"

struct probe_out {
	__s32 rc;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 tunnel_ok;
	__u32 tunnel_id;
	__u32 remote_ipv4;
	__u32 tunnel_ttl;
	__u32 _pad;
	struct flow_key key;
	__u32 l3_off;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct probe_out);
} probe SEC(".maps");

/* A non-zero skb->mark (settable through the test-run ctx) stands for a
 * tenant tag the kernel had moved to metadata: VID = mark & 0xfff. */
static __always_inline void fake_tenant_tag(struct __sk_buff *skb)
{
	if (skb->mark)
		bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), skb->mark & VLAN_VID_MASK);
}

static __always_inline int record(struct __sk_buff *skb, int rc)
{
	__u32 zero = 0;
	struct probe_out *out = bpf_map_lookup_elem(&probe, &zero);
	struct bpf_tunnel_key tk = {};

	if (!out)
		return rc;
	out->rc = rc;
	out->vlan_present = skb->vlan_present;
	out->vlan_tci = skb->vlan_tci;
	out->tunnel_ok = bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) == 0;
	out->tunnel_id = tk.tunnel_id;
	/* get_tunnel_key speaks from the receiver's side: on the TX info set
	 * by OUTPUT_TUNNEL the destination shows up as local_ipv4. */
	out->remote_ipv4 = tk.local_ipv4;
	out->tunnel_ttl = tk.tunnel_ttl;
	return rc;
}

SEC("tc")
int probe_port_ingress(struct __sk_buff *skb)
{
	fake_tenant_tag(skb);
	return record(skb, do_port_ingress(skb));
}

SEC("tc")
int probe_inject(struct __sk_buff *skb)
{
	return record(skb, do_inject(skb));
}

SEC("tc")
int probe_key(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct probe_out *out = bpf_map_lookup_elem(&probe, &zero);
	struct parse_info pi;

	fake_tenant_tag(skb);
	if (!out)
		return TC_ACT_SHOT;
	extract_key(skb, 7, &out->key, &pi);
	out->l3_off = pi.l3_off;
	return TC_ACT_OK;
}
