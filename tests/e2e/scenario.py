"""Shared by the e2e scenario tests: run ``hashplane demo`` as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from streams.broker import free_port
from tests.conftest import HASHPLANE, ROOT


def run_demo(data: Path, settings: dict[str, str], *args: str, timeout_s: float = 150) -> str:
    """Run ``hashplane demo --data-dir data`` with ``HASHPLANE_*`` ``settings`` and ``args``
    to its end (``--duration``); return its output; fail if it did not stop cleanly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHPLANE_")}
    env.update(PYTHONPATH=str(ROOT), **{f"HASHPLANE_{k}": v for k, v in settings.items()})
    proc = subprocess.Popen(
        [*HASHPLANE, "demo", "--data-dir", str(data), "--api-port", str(free_port()), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=data.parent)
    try:
        out = proc.communicate(timeout=timeout_s)[0].decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    return out
