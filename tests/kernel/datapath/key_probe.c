// SPDX-License-Identifier: Apache-2.0
/*
 * Test harness: the datapath program plus one probe that records the flow key
 * extract_key() computes, which BPF_PROG_TEST_RUN cannot return by itself.
 * Built only by tests/kernel/datapath/test_kernel_vs_python.py.
 */
#include "tessera_dp.c"

#define KEY_PROBE_PORT 7

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_key);
} key_out SEC(".maps");

SEC("tc")
int key_probe(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct flow_key *out = bpf_map_lookup_elem(&key_out, &zero);
	struct parse_info pi;

	/* A non-zero mark stands for a tenant tag the receive path had moved to
	 * metadata (a test run leaves a tag in band): VID = mark & 0xfff. */
	if (skb->mark)
		bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), skb->mark & VLAN_VID_MASK);
	if (!out)
		return TC_ACT_SHOT;
	extract_key(skb, KEY_PROBE_PORT, out, &pi);
	return TC_ACT_OK;
}
