"""The Neutron v2.0 API: OpenStack's networking API served by tessera itself (no
Neutron server, no Keystone), translating each Neutron write into tessera topology in
one NSDB transaction. See docs/neutron.md."""
