"""Finding the miners on a network: ``hashplane site discover CIDR [CIDR...]``.

Every address of the networks is asked for its CGMiner ``version`` with bounded concurrency
and a short timeout (a refused or silent address costs one connect attempt); a miner that
answers is identified (connectors/firmware ``identify``: firmware from its version reply,
model from ``version`` or ``devdetails``) and becomes an inventory entry.  Progress is
reported as it goes.  Merging into an inventory (schemas/site.py ``merge_asics``) adds only
miners it does not list yet and never touches what is there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from connectors.cgminer import CgminerDecodeError
from connectors.firmware import identify

#: A scan larger than this is almost always a typo (a /8 instead of a /24).
MAX_HOSTS = 1 << 18


@dataclass(frozen=True)
class Found:
    """A miner that answered."""

    host: str
    port: int
    firmware: str  # a dialect, or "unknown" for a CGMiner-like API we cannot name
    model: str = ""


@dataclass
class Progress:
    """What a scan has done so far (passed to the progress callback)."""

    total: int
    scanned: int = 0
    found: dict[str, int] = field(default_factory=dict)  # firmware -> count


def hosts(networks: Iterable[str]) -> list[str]:
    """Every host address of the networks (a single address is its own network);
    ValueError for a malformed one or a scan over ``MAX_HOSTS``."""
    out: list[str] = []
    for spec in networks:
        try:
            net = ipaddress.ip_network(spec, strict=False)
        except ValueError as exc:
            raise ValueError(f"{spec!r} is not an address or a network ({exc})") from None
        if net.num_addresses > MAX_HOSTS:
            raise ValueError(f"{spec} has {net.num_addresses:,} addresses; scan at most "
                             f"{MAX_HOSTS:,} at a time")
        out += [str(h) for h in (net.hosts() if net.num_addresses > 2 else net)]
        if len(out) > MAX_HOSTS:
            raise ValueError(f"the networks hold over {MAX_HOSTS:,} addresses")
    return list(dict.fromkeys(out))


async def scan(networks: Iterable[str], *, port: int = 4028, concurrency: int = 512,
               timeout_s: float = 1.0, progress: Callable[[Progress], None] | None = None,
               every_s: float = 1.0) -> list[Found]:
    """The miners answering on ``port`` in ``networks``, in address order."""
    addrs = hosts(networks)
    state = Progress(total=len(addrs))
    sem = asyncio.Semaphore(concurrency)
    found: list[Found] = []
    last = time.monotonic()

    retry: list[str] = []

    async def one(host: str, last_try: bool = False) -> None:
        nonlocal last
        async with sem:
            try:
                fw, model = await identify(host, port, timeout_s)
            except ConnectionRefusedError:
                fw = ""  # nothing listens there
            except (OSError, TimeoutError, CgminerDecodeError):
                if not last_try:  # a reset or a timeout in the burst: once more, at the end
                    retry.append(host)
                    return
                fw = ""
            except ValueError:
                fw, model = "unknown", ""  # it answers, but names no firmware we know
            state.scanned += 1
            if fw:
                found.append(Found(host, port, fw, model))
                state.found[fw] = state.found.get(fw, 0) + 1
            if progress is not None and time.monotonic() - last >= every_s:
                last = time.monotonic()
                progress(state)

    await asyncio.gather(*(one(h) for h in addrs))
    await asyncio.gather(*(one(h, last_try=True) for h in retry))
    if progress is not None:
        progress(state)
    return sorted(found, key=lambda f: (ipaddress.ip_address(f.host), f.port))
