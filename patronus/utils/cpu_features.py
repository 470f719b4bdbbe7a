"""What the CPU does fast: bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), read once from
the kernel's CPU flags (Linux; elsewhere assumed absent)."""

from __future__ import annotations

import functools
from pathlib import Path

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The flags of the first processor listed in /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def fast_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (avx512_bf16 or amx_bf16 among its flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in cpu_flags(text) for flag in FAST_BF16_FLAGS)
