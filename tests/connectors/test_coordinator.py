"""The compute miner against the simulated seed-002 coordinator, with real torch workloads."""

from __future__ import annotations

import contextlib
import hashlib

import httpx
import pytest

from connectors.base import Emitter, ListSink
from connectors.coordinator import CoordinatorClient, CoordinatorError, CoordinatorMiner
from connectors.workloads import UnknownWorkload, run
from schemas.compute_score import gpu_score, identify
from schemas.events import ComputeJobChanged
from sim.farm import Farm


def test_seed_001_scores() -> None:
    assert gpu_score("NVIDIA H200", 8) == pytest.approx(50.0)
    assert gpu_score("NVIDIA RTX 4090", 2) == pytest.approx(0.68 * 2 * 50 / 32)
    assert gpu_score("NVIDIA RTX 4090", 2, allocated=True) == pytest.approx(4.25)
    assert gpu_score("NVIDIA H200", 12) == pytest.approx(50.0)  # capped at 8 GPUs
    assert gpu_score("Intel Arc", 4) == 0.0


def test_identification_by_throughput() -> None:
    assert identify(0.7 * 82.6, 0.7 * 165.0)[0] == "NVIDIA RTX 4090"
    assert identify(0.7 * 19.5, 0.7 * 312.0)[0] in ("NVIDIA A100-SXM4-80GB",
                                                     "NVIDIA A100 80GB PCIe")
    assert identify(0.15, 0.9)[0] is None  # a CPU is no listed GPU


def test_workloads_are_deterministic_and_unknown_ones_refused() -> None:
    a, ma = run("torch_bench", {"size": 128, "iterations": 5, "seed": 9})
    b, _ = run("torch_bench", {"size": 128, "iterations": 5, "seed": 9})
    assert a == b and ma["gflops"] > 0 and ma["seconds"] > 0
    with pytest.raises(UnknownWorkload):
        run("llm_gen", {})
    with pytest.raises(ValueError):
        run("torch_bench", {"size": 1})


async def test_miner_runs_jobs_submits_proofs_and_fails_unknown_workloads(farm: Farm) -> None:
    ep = farm.endpoints()["coordinator"]
    farm.coordinator.job_size = 128
    sink = ListSink()
    client = CoordinatorClient(ep["url"], ep["api_key"])
    miner = CoordinatorMiner(client, Emitter(sink, source="t", site="s"), miner_id="m-1",
                             wallet="w-1")
    finals = [await miner.poll_once() for _ in range(4)]  # torch, torch, matmul, llm_gen
    assert [f.state if f else None for f in finals] == ["accepted", "accepted", "accepted",
                                                         "failed"]
    assert "unknown workload 'llm_gen'" in finals[3].detail  # type: ignore[union-attr]
    states = [e.state for e in sink.events if isinstance(e, ComputeJobChanged)
              and e.job_id == "job-000001"]
    assert states == ["assigned", "started", "completed", "submitted", "accepted"]
    first = finals[0]
    assert first is not None and first.credits == 1.0 and first.metrics["gflops"] > 0
    # The proof is the sha256 of the workload's output, as the coordinator recorded it.
    out, _ = run("torch_bench", {"size": 128, "iterations": 20, "seed": 1})
    assert first.proof_sha256 == hashlib.sha256(out).hexdigest()
    bench = finals[2]
    assert bench is not None and bench.metrics["fp32_tflops"] > 0
    assert bench.metrics["identified"] == 0.0  # this machine's CPU is no listed GPU
    # the coordinator checked the proof of GPU: a CPU is no listed class, and said so
    assert bench.verified_gpu == "" and bench.metrics["verified_spoofed"] == 0.0
    assert bench.metrics["verified_fp32_tflops"] == pytest.approx(bench.metrics["fp32_tflops"],
                                                                  rel=1e-3)
    assert first.verified_gpu is None  # torch_bench is not a verified workload
    # A retried proof submission is the same submission (Idempotency-Key from the job id).
    again = await client.submit_proof("job-000001", "m-1", "cpu", first.proof_sha256 or "",
                                      dict(first.metrics))
    assert again["status"] == "accepted"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ep['api_key']}"}) as c:
        bal = (await c.get(f"{ep['url']}/v1/wallet/balance", params={"wallet": "w-1"})).json()
    assert bal["balance"] == 1.0 + 1.0 + 2.0  # credited once per job

    miner.pause()
    assert await miner.poll_once() is None
    assert farm.coordinator.jobs_issued == 4
    miner.resume()
    await client.close()


async def test_bad_credentials_are_a_clear_error(farm: Farm) -> None:
    client = CoordinatorClient(farm.endpoints()["coordinator"]["url"], "wrong-key")
    miner = CoordinatorMiner(client, Emitter(ListSink(), source="t", site="s"),
                             miner_id="m-2", wallet="w")
    with pytest.raises(CoordinatorError) as err:
        await miner.poll_once()
    assert err.value.status == 403 and err.value.code == "FORBIDDEN"
    await client.close()


async def test_compute_commands_pause_intake_with_exactly_one_ack(farm: Farm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On the real broker: PauseComputeIntake closes intake, a redelivery is not acked twice,
    an expired command is acked expired, garbage goes to dlq."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from aiokafka import AIOKafkaConsumer

    from connectors.commands import CommandConsumer
    from schemas.commands import CommandAcknowledged, PauseComputeIntake, ResumeComputeIntake
    from streams.broker import EmbeddedBroker
    from streams.codec import decode, encode, encode_key
    from streams.publish import Publisher
    from streams.topics import ensure_topics

    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    await broker.start()
    await ensure_topics(broker.bootstrap)
    try:
        ep = farm.endpoints()["coordinator"]
        client = CoordinatorClient(ep["url"], ep["api_key"])
        async with Publisher(broker.bootstrap) as pub:
            emitter = Emitter(pub, source="connector:coordinator", site="site-1")
            miner = CoordinatorMiner(client, emitter, miner_id="m-9", wallet="w")
            cc = CommandConsumer(broker.bootstrap, "commands.compute", "test-compute",
                                 {"m-9", "site-1"}, miner.obey, emitter,
                                 actuator="connector:coordinator")
            now = datetime.now(UTC)
            kw = dict(site="site-1", source="agent:test", issued_by="test", reason="headroom")
            pause = PauseComputeIntake(device_id="m-9", ts=now, issued_at=now,
                                       expires_at=now + timedelta(seconds=30), **kw)
            old = ResumeComputeIntake(device_id="m-9", ts=now, issued_at=now - timedelta(
                minutes=5), expires_at=now - timedelta(minutes=4), **kw)
            other = ResumeComputeIntake(device_id="m-other", ts=now, issued_at=now,
                                        expires_at=now + timedelta(seconds=30), **kw)
            for c in (pause, pause, old, other):  # the pause twice: a redelivery
                await pub.send_raw("commands.compute", encode(c), key=encode_key(c))
            await pub.send_raw("commands.compute", b"{broken", key=b"m-9")
            stop = asyncio.Event()
            task = asyncio.create_task(cc.run(stop))
            for _ in range(100):
                await asyncio.sleep(0.1)
                if emitter.stats.dlq and miner.paused and len(cc.seen) == 2:
                    break
            stop.set()
            await task
        assert miner.paused
        acks_consumer = AIOKafkaConsumer("commands.acks", bootstrap_servers=broker.bootstrap,
                                         auto_offset_reset="earliest")
        await acks_consumer.start()
        got = await acks_consumer.getmany(timeout_ms=2000)
        await acks_consumer.stop()
        acks = [decode("commands.acks", r.value) for rs in got.values() for r in rs]
        assert all(isinstance(a, CommandAcknowledged) for a in acks)
        by = {str(a.command_id): a for a in acks}  # type: ignore[attr-defined]
        assert len(acks) == 2 and set(by) == {str(pause.command_id), str(old.command_id)}
        assert by[str(pause.command_id)].status == "applied"  # type: ignore[attr-defined]
        assert by[str(old.command_id)].status == "expired"  # type: ignore[attr-defined]
        await client.close()
    finally:
        await broker.stop()


@pytest.mark.parametrize(("name", "raw"), [
    ("empty", b""),
    ("not json", b"<html>502 Bad Gateway</html>"),
    ("list", b"[]"),
    ("no id", b'{"workload": "torch_bench"}'),
    ("id number", b'{"id": 7, "workload": "torch_bench"}'),
    ("blank id", b'{"id": "  ", "workload": "torch_bench"}'),
    ("no workload", b'{"id": "job-1"}'),
    ("workload object", b'{"id": "job-1", "workload": {"name": "x"}}'),
    ("params list", b'{"id": "job-1", "workload": "torch_bench", "params": [1]}'),
    ("deadline text", b'{"id": "job-1", "workload": "torch_bench", "deadline_s": "soon"}'),
    ("deadline negative", b'{"id": "job-1", "workload": "torch_bench", "deadline_s": -1}'),
    ("deadline bool", b'{"id": "job-1", "workload": "torch_bench", "deadline_s": true}'),
])
def test_malformed_jobs_are_refused(name: str, raw: bytes) -> None:
    from connectors.coordinator import JobPayloadError, parse_job

    with pytest.raises(JobPayloadError):
        parse_job(raw)


def test_a_valid_job_parses_with_defaults() -> None:
    from connectors.coordinator import parse_job

    job = parse_job(b'{"id": "job-1", "workload": "torch_bench", "params": null}')
    assert job["params"] == {} and job["deadline_s"] == 300.0


@pytest.mark.parametrize(("name", "raw"), [
    ("empty", b""),
    ("html", b"<html>oops</html>"),
    ("list", b'["Paris"]'),
    ("string", b'"Paris"'),
    ("no response", b'{"model": "m"}'),
    ("response null", b'{"response": null}'),
    ("response number", b'{"response": 42}'),
    ("response list", b'{"response": ["Paris"]}'),
    ("processing_time text", b'{"response": "Paris", "processing_time": "fast"}'),
    ("processing_time negative", b'{"response": "Paris", "processing_time": -1}'),
    ("truncated", b'{"response": "Par'),
])
def test_malformed_chat_replies_are_refused(name: str, raw: bytes) -> None:
    from connectors.model_probe import ChatReplyError, parse_chat_reply

    with pytest.raises(ChatReplyError):
        parse_chat_reply(raw)
    assert parse_chat_reply(b'{"response": "The capital is Paris.", "processing_time": 0.2}') \
        == "The capital is Paris."


async def test_a_rig_running_a_job_is_allocated_with_the_real_connectors_events(
        farm: Farm) -> None:
    """Seed 001's bonus from the events the connectors really write: the GPU telemetry of
    the simulated rig's NVML, and the job events of the coordinator miner (whose device is
    its coordinator account, the machine the inventory's coordinator.rig)."""
    from agents.compute import fold
    from connectors.gpu_telemetry import GpuTelemetry, HttpNvmlBackend
    from schemas.events import GpuTelemetryObserved
    from schemas.metrics import ComputeScoreComputed

    rig = farm.endpoints()["rigs"][0]
    sink = ListSink()
    emitter = Emitter(sink, source="t", site="site-1")
    await GpuTelemetry({rig["id"]: HttpNvmlBackend(rig["nvml_url"])}, emitter).sweep()
    cards = [e for e in sink.events if isinstance(e, GpuTelemetryObserved)]
    assert cards and {c.rig_id for c in cards} == {rig["id"]}
    ep = farm.endpoints()["coordinator"]
    farm.coordinator.job_size = 64
    miner = CoordinatorMiner(CoordinatorClient(ep["url"], ep["api_key"]), emitter,
                             miner_id="hashplane-miner-1", wallet="w-1", rig_id=rig["id"])
    assert (await miner.poll_once()).state == "accepted"  # type: ignore[union-attr]
    jobs = [e for e in sink.events if isinstance(e, ComputeJobChanged)]
    assert {j.device_id for j in jobs} == {"hashplane-miner-1"}
    _, out = fold([*cards, *jobs])
    scores = [(m.score, m.components["allocated"]) for m in out
              if isinstance(m, ComputeScoreComputed)]
    base = scores[len(cards) - 1][0]
    assert base > 0 and scores[len(cards):] == [(2 * base, 1.0), (base, 0.0)]


async def test_the_coordinator_refuses_a_proof_of_gpu_that_does_not_check_out(
        farm: Farm) -> None:
    import json

    ep = farm.endpoints()["coordinator"]
    farm.coordinator.job_size = 64
    farm.coordinator.job_mix = ("gpu_matmul_bench",)
    client = CoordinatorClient(ep["url"], ep["api_key"])
    await client.heartbeat("m-1", "w-1", "cpu")
    job = await client.next_job("m-1")
    assert job is not None
    out, metrics = run("gpu_matmul_bench", job["params"])
    proofs = json.loads(out)
    row = proofs["proofs"]["fp32"]["openings"][0]
    row["path"] = row["path"][::-1]  # a commitment bent after the fact
    bent = json.dumps(proofs, sort_keys=True)
    with pytest.raises(CoordinatorError) as err:
        await client.submit_proof(job["id"], "m-1", "cpu",
                                  hashlib.sha256(bent.encode()).hexdigest(), metrics, bent)
    assert err.value.code == "PROOF_INVALID" and "Merkle path" in err.value.message
    with pytest.raises(CoordinatorError) as err:  # an output that is not the one hashed
        await client.submit_proof(job["id"], "m-1", "cpu", hashlib.sha256(out).hexdigest(),
                                  metrics, bent)
    assert "does not hash" in err.value.message
    await client.close()


async def test_a_proof_whose_answer_is_lost_is_sent_again_and_credited_once(farm: Farm) -> None:
    ep = farm.endpoints()["coordinator"]
    farm.coordinator.job_size = 64
    farm.coordinator.job_mix = ("torch_bench",)
    farm.coordinator.slow_proof_replies, farm.coordinator.proof_reply_delay_s = 1, 3.0
    sink = ListSink()
    miner = CoordinatorMiner(CoordinatorClient(ep["url"], ep["api_key"], timeout_s=1.0),
                             Emitter(sink, source="t", site="s"), miner_id="m-1",
                             wallet="w-lost", retry_s=0.2)
    final = await miner.poll_once()
    assert final is not None and final.state == "accepted" and final.credits == 1.0
    assert farm.coordinator.balances["w-lost"] == 1.0  # the coordinator counted it once
    states = [e.state for e in sink.events if isinstance(e, ComputeJobChanged)]
    assert states == ["assigned", "started", "completed", "submitted", "accepted"]
    for r in miner.runners:
        r.stop()


async def test_a_job_past_its_deadline_is_stopped_and_heartbeats_go_on(farm: Farm) -> None:
    import asyncio
    import os

    ep = farm.endpoints()["coordinator"]
    c = farm.coordinator
    c.job_mix, c.job_size, c.job_iterations, c.job_deadline_s = ("torch_bench",), 1024, 10_000, 3.0
    sink = ListSink()
    miner = CoordinatorMiner(CoordinatorClient(ep["url"], ep["api_key"]),
                             Emitter(sink, source="t", site="s"), miner_id="m-slow",
                             wallet="w-1", poll_s=0.2, heartbeat_s=0.25)
    stop = asyncio.Event()
    task = asyncio.create_task(miner.run(stop))

    def events(state: str) -> list[ComputeJobChanged]:
        return [e for e in sink.events if isinstance(e, ComputeJobChanged) and e.state == state]

    while not events("started"):
        await asyncio.sleep(0.05)
    beats, pid = c.heartbeats, None
    while pid is None:
        pid = miner.runners[0].pid
        await asyncio.sleep(0.05)
    while not events("failed"):
        await asyncio.sleep(0.1)
    c.job_iterations = 5  # the next job is quick
    failed = events("failed")[0]
    assert "stopped" in failed.detail and "killed" in failed.detail
    assert c.heartbeats - beats >= 4  # about 3 s of a running job at a 0.25 s heartbeat
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        raise AssertionError(f"the workload's process {pid} is still alive")
    while not events("accepted"):  # a new worker takes the next job
        await asyncio.sleep(0.1)
    stop.set()
    await task


def test_slots_are_the_usable_gpus_up_to_what_the_account_allows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import coordinator

    client = CoordinatorClient("http://127.0.0.1:9", "k")
    emitter = Emitter(ListSink(), source="t", site="s")

    def miner(**kw: object) -> CoordinatorMiner:
        return CoordinatorMiner(client, emitter, miner_id="m", wallet="w", **kw)  # type: ignore[arg-type]

    assert len(miner().runners) == 1  # no CUDA here: one CPU slot
    monkeypatch.setattr(coordinator, "_cuda_devices", lambda: 4)  # a 4-GPU rig (no CUDA here)
    assert len(miner().runners) == 1  # the account allows one (seed 002's default)
    four = miner(max_slots=8)
    assert [r.gpu for r in four.runners] == [0, 1, 2, 3] and four.mode == "gpu"
    assert len(miner(max_slots=2).runners) == 2
