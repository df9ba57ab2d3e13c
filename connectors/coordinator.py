"""The miner side of the seed-002 Coordinator API v1 -> ``compute.jobs``.

Heartbeat every ``heartbeat_s``; when intake is open, poll ``/v1/miner/next``; run the
workload (``connectors.workloads``; an unknown one fails with a clear job event, never a fake
success); submit the proof (sha256 of the output plus metrics) with an ``Idempotency-Key``
derived from the job id, so a retried submission is the same submission.  Every step of a
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

    async def heartbeat(self, miner_id: str, wallet: str, mode: str) -> None:
        await self._call("POST", "/v1/miner/heartbeat", json={
            "miner_id": miner_id, "wallet": wallet, "mode": mode, "gpu": mode == "gpu",
            "workloads": sorted(workloads.WORKLOADS)})

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
    """One compute miner: heartbeats, job intake, workloads, proofs, job events."""

    def __init__(self, client: CoordinatorClient, emitter: Emitter, *, miner_id: str,
                 wallet: str, poll_s: float = 3.0, heartbeat_s: float = 20.0,
                 job_timeout_s: float = 300.0, rig_id: str = ""):
        self.client, self.emitter = client, emitter
        self.miner_id, self.wallet = miner_id, wallet
        self.rig_id = rig_id  # the machine whose GPUs run the jobs (scores double while busy)
        self.poll_s, self.heartbeat_s, self.job_timeout_s = poll_s, heartbeat_s, job_timeout_s
        self.paused = False
        self.mode = "gpu" if _cuda() else "cpu"
        self._last_heartbeat = -1e9

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

    async def poll_once(self) -> ComputeJobChanged | None:
        """Heartbeat when due, take at most one job and see it through; its last event."""
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_s:
            await self.client.heartbeat(self.miner_id, self.wallet, self.mode)
            self._last_heartbeat = now
        if self.paused:
            return None
        try:
            job = await self.client.next_job(self.miner_id)
        except JobPayloadError as exc:
            await self.emitter.dead(f"{self.client.base}/v1/miner/next", None, str(exc),
                                    key=self.miner_id)
            return None
        if job is None:
            return None
        await self.emitter.emit([self._event(job, "assigned")])
        return await self.run_job(job)

    async def run_job(self, job: dict[str, Any]) -> ComputeJobChanged:
        name = str(job.get("workload", ""))
        if name not in workloads.WORKLOADS:
            ev = self._event(job, "failed", detail=f"unknown workload {name!r}; this miner "
                             f"runs {', '.join(sorted(workloads.WORKLOADS))}")
            await self.emitter.emit([ev])
            return ev
        await self.emitter.emit([self._event(job, "started")])
        t0 = time.perf_counter()
        try:
            output, metrics = await asyncio.wait_for(
                asyncio.to_thread(workloads.run, name, dict(job.get("params") or {})),
                min(self.job_timeout_s, float(job.get("deadline_s", self.job_timeout_s))))
        except (ValueError, TimeoutError, RuntimeError) as exc:
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
            answer = await self.client.submit_proof(
                job["id"], self.miner_id, self.mode, sha, clean,
                output.decode() if name in workloads.VERIFIABLE else None)
        except CoordinatorError as exc:
            ev = self._event(job, "rejected", detail=str(exc), proof_sha256=sha,
                             duration_s=duration)
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

    async def run(self, stop: asyncio.Event) -> None:
        async def tick() -> None:
            try:
                await self.poll_once()
            except (ConnectorError, JobPayloadError) as exc:
                self.emitter.error(exc)
                log.warning("coordinator: %s", exc)
        try:
            await every(self.poll_s, stop, tick)
        finally:
            await self.client.close()


class ComputeMinerService:
    """The miner plus its ``commands.compute`` consumer, run together."""

    def __init__(self, miner: CoordinatorMiner, commands: Any):
        self.miner, self.commands = miner, commands
        self.emitter = miner.emitter

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.miner.run(stop), self.commands.run(stop))


def _cuda() -> bool:
    return bool(workloads._torch().cuda.is_available())
