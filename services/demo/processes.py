"""The demo's long-running services under one Supervisor: started, watched, restarted.

A watcher thread restarts what dies (the Supervisor's rule) and keeps OUT/pids.json current, so
that a test can kill a service mid-run and find its replacement.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from services.common.supervisor import Supervisor
from services.demo.config import DemoError, status
from services.demo.services_plan import ServicePlan


class ServiceGroup:
    """The planned services and, once it runs, the replaying simulator (for pids.json)."""

    def __init__(self, plans: dict[str, ServicePlan], out: Path, notes: list[str]) -> None:
        self.plans = plans
        self.out = out
        self.logs = out / "logs"
        self.notes = notes
        """The run's notes: the watcher adds one when the supervisor gives up."""
        self.supervisor = Supervisor(
            [p.spec() for p in plans.values()],
            log_dir=self.logs,
            max_restarts=3,
            restart_delay_s=0.5,
        )
        self.simulator: subprocess.Popen[bytes] | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, ready_timeout_s: float) -> None:
        self.supervisor.start_all()
        self.write_pids()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()
        status(f"services: started {', '.join(self.plans)} (logs in {self.logs})")
        self._wait_ready(ready_timeout_s)

    def _watch(self) -> None:
        while not self._watch_stop.wait(0.3):
            self._serve_promoted_policy()
            try:
                restarted = self.supervisor.check_once()
            except RuntimeError as exc:
                status(f"supervisor gave up: {exc}")
                self.notes.append(f"supervisor gave up: {exc}")
                return
            if restarted:
                status(f"restarted {', '.join(restarted)}")
                self.write_pids()

    def _serve_promoted_policy(self) -> None:
        """Point the policy server's command at the artifact the trainer's `current` pointer
        names, so that a restart (after a crash) serves the promoted student, not the teacher
        the demo first started it with."""
        child = self.supervisor.children.get("policy")
        if child is None:
            return
        spec = child.spec
        served = Path(spec.env["RLMF_POLICY_MODEL_DIR"])
        pointer = served.parent / "current"
        if not pointer.is_file():
            return
        name = pointer.read_text().strip()
        if not name or not (served.parent / name).is_dir():
            return  # the trainer is moving the pointer: look again on the next turn
        target = str(served.parent / name)
        if target != str(served):
            spec.env["RLMF_POLICY_MODEL_DIR"] = target
            spec.argv[spec.argv.index("--model_dir") + 1] = target

    def write_pids(self) -> None:
        with self._lock:
            children = self.supervisor.children.items()
            pids = {n: c.process.pid for n, c in children if c.process}
            if self.simulator is not None:
                pids["simulator"] = self.simulator.pid
            tmp = self.out / "pids.json.tmp"
            tmp.write_text(json.dumps(pids))
            tmp.replace(self.out / "pids.json")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = dict(self.plans)
        with tqdm(total=len(pending), desc="services ready", unit="svc", file=sys.stderr) as bar:
            while pending:
                for name, plan in list(pending.items()):
                    if _answers(plan.ready_url):
                        pending.pop(name)
                        bar.update(1)
                self.check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"not ready after {timeout_s:.0f}s: "
                        f"{', '.join(pending)} (see {self.logs}/<service>.log)"
                    )
                time.sleep(0.5)
        status("services: all ready")

    def check_alive(self) -> None:
        """Raise when a service keeps exiting: the supervisor stopped restarting it."""
        for name, child in self.supervisor.children.items():
            if (
                child.restarts >= self.supervisor.max_restarts
                and child.process
                and child.process.poll() is not None
            ):
                raise DemoError(
                    f"{name} keeps exiting (code {child.process.returncode}); "
                    f"see {self.logs}/{name}.log"
                )

    def kill(self, name: str) -> int:
        """SIGKILL one service (chaos); the watcher restarts it. Returns the killed pid."""
        child = self.supervisor.children.get(name)
        if child is None or child.process is None:
            raise DemoError(
                f"--kill-service {name}: no such running service"
                f" ({', '.join(self.supervisor.children)})"
            )
        pid = child.process.pid
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> tuple[dict[str, int], dict[str, int | None]]:
        """Stop watching, then SIGTERM every service (the supervisor's reverse order).
        Returns the restarts and exit codes per service."""
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        restarts = {n: c.restarts for n, c in self.supervisor.children.items()}
        return restarts, self.supervisor.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
