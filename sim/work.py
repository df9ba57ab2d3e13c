"""A simulated miner's proof of work: finding a nonce whose header meets a pool's target.

Written from the Stratum v1 and Bitcoin header formats, not taken from hashplane's pool
(connectors/stratum_pool.py), so the pool's check is tested against an independent
miner; both are tested against real blocks.  A simulated miner cannot do an ASIC's work
(a share at difficulty 65,536 takes 2**48 hashes), so it searches for real only when the
target needs at most ``MAX_EXPECTED_HASHES`` on average: the demo runs hashplane's local
pool at such a difficulty.  At harder difficulties (the simulated upstream pool) it sends
a random nonce, which only that pool, the simulator's own, takes on trust.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from typing import Any

DIFF1 = 0xFFFF * 2**208
MAX_EXPECTED_HASHES = 4096
ROLL_MASK = 0x1FFFE000


def _dsha(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def _prevhash_bytes(prevhash: str) -> bytes:
    raw = bytes.fromhex(prevhash)  # Stratum sends each 4-byte word byte-swapped
    return b"".join(raw[i:i + 4][::-1] for i in range(0, 32, 4))


def feasible(difficulty: float) -> bool:
    return difficulty * 2**32 <= MAX_EXPECTED_HASHES


def search(notify: list[Any], extranonce1: str, en2_size: int, difficulty: float,
           good: bool, tries: int = 8 * MAX_EXPECTED_HASHES) -> tuple[str, str, str] | None:
    """(extranonce2, ntime, nonce) of a share that meets the target (``good``) or misses
    it; None when no try within ``tries`` did."""
    _job, prevhash, coinb1, coinb2, branch, version, nbits, ntime = notify[:8]
    en2 = secrets.token_hex(en2_size)
    root = _dsha(bytes.fromhex(coinb1 + extranonce1 + en2 + coinb2))
    for h in branch:
        root = _dsha(root + bytes.fromhex(h))
    head = (int(version, 16).to_bytes(4, "little") + _prevhash_bytes(prevhash) + root
            + bytes.fromhex(ntime)[::-1] + bytes.fromhex(nbits)[::-1])
    limit = DIFF1 / difficulty
    start = secrets.randbelow(2**32)
    for i in range(tries):
        nonce = (start + i) & 0xFFFFFFFF
        value = int.from_bytes(_dsha(head + struct.pack("<I", nonce)), "little")
        if (value <= limit) == good:
            return en2, ntime, f"{nonce:08x}"
    return None
