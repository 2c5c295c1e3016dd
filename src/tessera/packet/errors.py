"""The one exception the packet layer raises.

Frames come from untrusted VMs, so every caller needs exactly one thing to catch: a
malformed, truncated or unbuildable packet always surfaces as `PacketError`, never as a
stray `struct.error`, `IndexError` or `UnicodeDecodeError`.
"""

from __future__ import annotations


class PacketError(ValueError):
    """A frame or header that cannot be parsed or built."""
