"""A small simulated farm on its own loopback range, per test."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sim.farm import Farm, FarmConfig
from streams.broker import free_port

_subnet = itertools.count(10)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[tuple[str, int] | None]:
    """Mosquitto on a free port when installed (``make test`` installs it as root);
    otherwise None and the farm starts its embedded amqtt broker.  It runs as the user
    running the tests (``user``: no privilege drop, which a user namespace refuses), and a
    broker that does not come up fails the test with its own words."""
    exe = shutil.which("mosquitto")
    if exe is None:
        yield None
        return
    import getpass
    import socket
    import time

    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"user {getpass.getuser()}\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            pytest.fail(f"mosquitto did not listen on {port} (100 attempts)")
        if proc.poll() is not None:
            out = (tmp_path / "mosquitto.log").read_text(errors="replace")
            pytest.fail(f"mosquitto exited {proc.returncode}: {out[-500:]}")
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def farm_config(tmp_path: Path, **kw: object) -> FarmConfig:
    base = f"127.0.{next(_subnet)}.1"
    defaults: dict[str, object] = dict(asics=4, gpu_rigs=2, gpus_per_rig=2, model_endpoints=2,
                                       data_dir=tmp_path / "sim", asic_base_ip=base, speed=1.0)
    defaults.update(kw)
    return FarmConfig(**defaults)  # type: ignore[arg-type]


@pytest.fixture
async def farm(tmp_path: Path, mqtt_broker: tuple[str, int] | None) -> AsyncIterator[Farm]:
    extra: dict[str, object] = {}
    if mqtt_broker is not None:
        extra = {"mqtt_host": mqtt_broker[0], "mqtt_port": mqtt_broker[1], "mqtt_external": True}
    f = Farm(farm_config(tmp_path, **extra))
    await f.start()
    try:
        yield f
    finally:
        await f.stop()

