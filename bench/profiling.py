"""Where a sampled process's time went (py-spy raw stacks summarised by function), and what
memory it holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

#: Our own code, counted wherever it appears in a stack.
OWN = ("streams/", "agents/", "connectors/", "schemas/")


def summarize(path: Path, top: int = 12,
              libraries: tuple[str, ...] = ("chdb", "aiokafka/producer",
                                            "aiokafka/consumer")) -> None:
    """The functions of hashplane's own code (and of the ``libraries`` it calls) that the
    samples of one process were in, by share of samples (inclusive)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = {f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1].split(":")[0]
                  for f in stack.split(";")
                  if any(k in f for k in libraries)
                  or ("site-packages" not in f and "cli.py" not in f
                      and any(k in f for k in OWN))}
        counts.update(dict.fromkeys(frames, int(n)))
    print(f"  {path.name}: {total} samples")
    for name, hits in counts.most_common(top):
        print(f"    {100 * hits / max(1, total):5.1f}%  {name})")


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's memory as the kernel counts it, KiB: ``VmRSS`` (resident now) or
    ``VmHWM`` (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0
