"""The miner side of the seed-002 Coordinator API v1 -> ``compute.jobs``.

Heartbeat every ``heartbeat_s`` (while jobs run too); when intake is open, poll
``/v1/miner/next`` for each free slot (one per usable GPU); run the workload in the slot's
worker process (``connectors.workloads``; an unknown one fails with a clear job event, never
a fake success; one past its deadline is killed); submit the proof (sha256 of the output
plus metrics, and the output itself for a proof of GPU) with an ``Idempotency-Key`` derived
from the job id, again after a transport error until the deadline, so a retried submission
is the same submission.  Every step of a
job's life is a ``ComputeJobChanged`` event.  ``pause()``/``resume()`` close and open job
intake (what ``commands.compute`` asks for); running jobs finish.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx

from connectors import workloads
from connectors.base import ConnectorError, Emitter, ReplyError, every, fetch, load_json
from schemas.commands import AckStatus, PauseComputeIntake, ResumeComputeIntake
from schemas.envelope import Command
from schemas.events import ComputeJobChanged, JobState

log = logging.getLogger(__name__)
SOURCE = "connector:coordinator"
_IDEMPOTENCY_NS = uuid5(NAMESPACE_URL, "hashplane:coordinator:proof")


class CoordinatorError(ConnectorError):
    """A non-2xx answer, with the seed-002 error body's code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class JobPayloadError(ValueError):
    """A ``next`` answer that is not a job."""


def parse_job(raw: bytes) -> dict[str, Any]:
    """A job from the coordinator's ``next`` answer; JobPayloadError if it is not one."""
    try:
        job = load_json(raw)
    except ValueError as exc:
        raise JobPayloadError(f"not JSON: {exc}") from None
    if not isinstance(job, dict):
        raise JobPayloadError(f"JSON {type(job).__name__}, not a job object")
    if not isinstance(job.get("id"), str) or not job["id"].strip():
        raise JobPayloadError("job has no string 'id'")
    if not isinstance(job.get("workload"), str) or not job["workload"]:
        raise JobPayloadError("job has no string 'workload'")
    params = job.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise JobPayloadError("'params' is not an object")
    deadline = job.get("deadline_s", 300)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
        raise JobPayloadError(f"'deadline_s' is not a positive number ({deadline!r})")
    return {**job, "params": params, "deadline_s": float(deadline)}


class CoordinatorClient:
    """Coordinator API v1 over HTTP with Bearer auth."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 10.0):
        self.base, self.timeout_s = base_url.rstrip("/"), timeout_s
        self.http = httpx.AsyncClient(timeout=timeout_s,
                                      headers={"Authorization": f"Bearer {api_key}"})

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> tuple[int, bytes]:
        """One call: its status and body (read up to the reply cap)."""
        try:
            status, body = await fetch(self.http, method, f"{self.base}{path}",
                                       timeout=self.timeout_s, **kw)
        except httpx.HTTPError as exc:
            raise ConnectorError(f"coordinator {self.base}: {exc!r}") from exc
        except ReplyError as exc:
            raise JobPayloadError(str(exc)) from None
        if status >= 400:
            try:
                err = load_json(body)["error"]
                code, message = str(err["code"]), str(err["message"])
            except (ValueError, KeyError, TypeError):
                code, message = "HTTP_ERROR", body[:200].decode("utf-8", "replace")
            raise CoordinatorError(status, code, message)
        return status, body

    async def heartbeat(self, miner_id: str, wallet: str, mode: str, slots: int = 1) -> None:
        await self._call("POST", "/v1/miner/heartbeat", json={
            "miner_id": miner_id, "wallet": wallet, "mode": mode, "gpu": mode == "gpu",
            "concurrency": slots, "workloads": sorted(workloads.WORKLOADS)})

    async def next_job(self, miner_id: str, slots: int = 1) -> dict[str, Any] | None:
        status, body = await self._call("GET", "/v1/miner/next",
                                        params={"miner": miner_id, "slots": slots})
        if status == 204:
            return None
        return parse_job(body)

    async def submit_proof(self, job_id: str, miner_id: str, mode: str, output_sha: str,
                           metrics: dict[str, float], output: str | None = None,
                           ) -> dict[str, Any]:
        """Submit a proof (``output``: the workload's output itself, for workloads the
        coordinator verifies)."""
        key = str(uuid5(_IDEMPOTENCY_NS, job_id))
        body = {"id": job_id, "miner_id": miner_id, "mode": mode, "output_sha": output_sha,
                "metrics": metrics, **({"output": output} if output is not None else {})}
        _, raw = await self._call("POST", "/v1/miner/proof", headers={"Idempotency-Key": key},
                                  json=body)
        try:
            body = load_json(raw)
        except ReplyError:
            return {}
        return body if isinstance(body, dict) else {}


class CoordinatorMiner:
    """One compute miner: heartbeats, job intake, workloads, proofs, job events.

    ``slots``: how many jobs run at once: one per usable GPU (each in its own worker
    process that sees only its card) up to ``max_slots`` (what the coordinator account
    allows, seed 002's MAX_CONCURRENCY), one on a machine without a GPU; the coordinator is
    told (heartbeat ``concurrency``, ``next?slots=``) and hands out at most that many.
    Heartbeats go on while jobs run.  A job is bounded by its deadline (and
    ``job_timeout_s``): past it the worker process is killed, which stops the workload and
    frees the GPU, and the job fails with the reason.  A proof is submitted again, with the
    same Idempotency-Key, after a transport error, a timeout or a 5xx, until the job's
    deadline: a job never sits completed and unsent while the coordinator can be reached.
    """

    def __init__(self, client: CoordinatorClient, emitter: Emitter, *, miner_id: str,
                 wallet: str, poll_s: float = 3.0, heartbeat_s: float = 20.0,
                 job_timeout_s: float = 300.0, rig_id: str = "", slots: int | None = None,
                 max_slots: int = 1, retry_s: float = 1.0):
        self.client, self.emitter = client, emitter
        self.miner_id, self.wallet = miner_id, wallet
        self.rig_id = rig_id  # the machine whose GPUs run the jobs (scores double while busy)
        self.poll_s, self.heartbeat_s, self.job_timeout_s = poll_s, heartbeat_s, job_timeout_s
        self.retry_s = retry_s
        self.paused = False
        gpus = _cuda_devices()
        self.mode = "gpu" if gpus else "cpu"
        # one job per usable GPU, as many as the coordinator account allows
        n = slots if slots is not None else max(1, min(gpus, max_slots))
        self.runners = [workloads.WorkloadRunner(i if gpus else None) for i in range(n)]
        self._last_heartbeat = -1e9
        self._jobs: set[asyncio.Task[Any]] = set()

    def pause(self) -> None:
        """Stop taking new jobs (``PauseComputeIntake``)."""
        self.paused = True

    def resume(self) -> None:
        """Take jobs again (``ResumeComputeIntake``)."""
        self.paused = False

    async def obey(self, cmd: Command) -> tuple[AckStatus, str]:
        """``commands.compute``: pause or resume job intake."""
        if isinstance(cmd, PauseComputeIntake):
            self.pause()
            return "applied", "job intake paused; running jobs finish"
        if isinstance(cmd, ResumeComputeIntake):
            self.resume()
            return "applied", "job intake resumed"
        return "rejected", f"{cmd.kind} is not a compute command this miner handles"

    def _event(self, job: dict[str, Any], state: JobState, **kw: Any) -> ComputeJobChanged:
        return ComputeJobChanged(site=self.emitter.site, device_id=self.miner_id,
                                 ts=self.emitter.clock(), source=SOURCE, job_id=job["id"],
                                 rig_id=self.rig_id,
                                 workload=str(job.get("workload", "")), state=state, **kw)

    async def heartbeat(self) -> None:
        await self.client.heartbeat(self.miner_id, self.wallet, self.mode, len(self.runners))
        self._last_heartbeat = time.monotonic()

    async def take(self, runner: workloads.WorkloadRunner) -> dict[str, Any] | None:
        """One job for a free slot, if intake is open and the coordinator has one."""
        if self.paused:
            return None
        free = sum(1 for r in self.runners if not r.busy)
        try:
            job = await self.client.next_job(self.miner_id, max(1, free))
        except JobPayloadError as exc:
            await self.emitter.dead(f"{self.client.base}/v1/miner/next", None, str(exc),
                                    key=self.miner_id)
            return None
        if job is not None:
            job["_received"] = time.monotonic()
            runner.busy = True  # held from here: the next take sees one slot fewer
            await self.emitter.emit([self._event(job, "assigned")])
        return job

    async def poll_once(self) -> ComputeJobChanged | None:
        """Heartbeat when due, take at most one job and see it through; its last event."""
        if time.monotonic() - self._last_heartbeat >= self.heartbeat_s:
            await self.heartbeat()
        runner = next((r for r in self.runners if not r.busy), None)
        if runner is None:
            return None
        job = await self.take(runner)
        if job is None:
            return None
        return await self.run_job(job, runner)

    async def run_job(self, job: dict[str, Any],
                      runner: workloads.WorkloadRunner | None = None) -> ComputeJobChanged:
        runner = runner or self.runners[0]
        received = float(job.get("_received", time.monotonic()))
        budget = min(self.job_timeout_s, float(job.get("deadline_s", self.job_timeout_s)))
        deadline = received + budget
        name = str(job.get("workload", ""))
        if name not in workloads.WORKLOADS:
            runner.busy = False
            ev = self._event(job, "failed", detail=f"unknown workload {name!r}; this miner "
                             f"runs {', '.join(sorted(workloads.WORKLOADS))}")
            await self.emitter.emit([ev])
            return ev
        await self.emitter.emit([self._event(job, "started")])
        t0 = time.perf_counter()
        try:
            output, metrics = await runner.run(name, dict(job.get("params") or {}),
                                               max(0.1, deadline - time.monotonic()))
        except (ValueError, TimeoutError, RuntimeError, KeyError) as exc:
            ev = self._event(job, "failed", detail=f"{type(exc).__name__}: {exc}"[:4096],
                             duration_s=time.perf_counter() - t0)
            await self.emitter.emit([ev])
            return ev
        duration = time.perf_counter() - t0
        sha = hashlib.sha256(output).hexdigest()
        clean = {k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")}
        await self.emitter.emit([self._event(job, "completed", duration_s=duration,
                                             proof_sha256=sha, metrics=clean)])
        try:
            answer = await self._submit(job, sha, clean,
                                        output.decode() if name in workloads.VERIFIABLE
                                        else None, deadline)
        except CoordinatorError as exc:
            ev = self._event(job, "rejected", detail=str(exc), proof_sha256=sha,
                             duration_s=duration)
            await self.emitter.emit([ev])
            return ev
        except ConnectorError as exc:  # the deadline passed with the coordinator unreachable
            ev = self._event(job, "failed", detail=f"proof not delivered before the job's "
                             f"deadline: {exc}"[:4096], proof_sha256=sha, duration_s=duration)
            await self.emitter.emit([ev])
            return ev
        await self.emitter.emit([self._event(job, "submitted", proof_sha256=sha)])
        credits = answer.get("credits")
        got = answer.get("verified")
        verified: dict[str, Any] = got if isinstance(got, dict) else {}
        checked = {f"verified_{k}": float(v) for k, v in verified.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and v == v}
        if "spoofed" in verified:
            checked["verified_spoofed"] = 1.0 if verified["spoofed"] else 0.0
        ev = self._event(job, "accepted" if answer.get("status") == "accepted" else "rejected",
                         proof_sha256=sha, duration_s=duration, metrics={**clean, **checked},
                         credits=float(credits) if isinstance(credits, int | float) else None,
                         detail=str(answer.get("status", "")),
                         verified_gpu=str(verified.get("class") or "")[:200]
                         if verified else None)
        await self.emitter.emit([ev])
        return ev

    async def _submit(self, job: dict[str, Any], sha: str, metrics: dict[str, float],
                      output: str | None, deadline: float) -> dict[str, Any]:
        """The proof, again after transport errors, timeouts and 5xx (same Idempotency-Key)
        until ``deadline``; CoordinatorError for a refusal (4xx), ConnectorError past it."""
        wait = self.retry_s
        while True:
            try:
                return await self.client.submit_proof(job["id"], self.miner_id, self.mode, sha,
                                                      metrics, output)
            except CoordinatorError as exc:
                if exc.status < 500:
                    raise
                err: ConnectorError = exc
            except ConnectorError as exc:
                err = exc
            if time.monotonic() + wait > deadline:
                raise ConnectorError(str(err)) from err
            log.warning("coordinator: proof of %s not delivered (%s); again in %.1f s",
                        job["id"], err, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 10.0)

    async def run(self, stop: asyncio.Event) -> None:
        async def beat() -> None:
            try:
                await self.heartbeat()
            except (ConnectorError, JobPayloadError) as exc:
                self.emitter.error(exc)
                log.warning("coordinator heartbeat: %s", exc)

        async def intake() -> None:
            for runner in self.runners:
                if runner.busy:
                    continue
                try:
                    job = await self.take(runner)
                except (ConnectorError, JobPayloadError) as exc:
                    self.emitter.error(exc)
                    log.warning("coordinator: %s", exc)
                    return
                if job is None:
                    return
                task = asyncio.create_task(self.run_job(job, runner))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)

        try:
            await asyncio.gather(every(self.heartbeat_s, stop, beat),
                                 every(self.poll_s, stop, intake))
            if self._jobs:  # running jobs finish (their deadline bounds them)
                await asyncio.gather(*self._jobs, return_exceptions=True)
        finally:
            for t in self._jobs:
                t.cancel()
            for r in self.runners:
                r.stop()
            await self.client.close()


class ComputeMinerService:
    """The miner plus its ``commands.compute`` consumer, run together."""

    def __init__(self, miner: CoordinatorMiner, commands: Any):
        self.miner, self.commands = miner, commands
        self.emitter = miner.emitter

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.miner.run(stop), self.commands.run(stop))


def _cuda_devices() -> int:
    """Usable GPUs on this machine (0 without CUDA)."""
    torch = workloads._torch()
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
