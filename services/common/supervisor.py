"""`rlmf up`: run the broker and every service as local processes, restarting any that dies."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Start order follows the data flow, so consumers find their topics' producers coming up.
SERVICE_ORDER = (
    "ingest",
    "sentiment",
    "features",
    "policy",
    "simulator",
    "trainer",
    "promotion_watcher",
)

EXIT_CONFIG = 78
"""A child's exit code for "configuration error, do not restart" (sysexits.h's EX_CONFIG): it
cannot start for a reason a restart will not fix, such as a missing artifact folder. Restarting
it would only repeat the error every few seconds, so the supervisor reports it once instead."""


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Supervised:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0
    failed: str | None = None
    """Why the child is not restarted (it exited with EXIT_CONFIG); None while supervised."""


def available_services() -> list[str]:
    """Services whose package has an entrypoint (`python -m services.<name>`)."""
    return [name for name in SERVICE_ORDER if importlib.util.find_spec(f"services.{name}.__main__")]


def service_spec(name: str, env: dict[str, str] | None = None) -> ProcessSpec:
    return ProcessSpec(name, [sys.executable, "-m", f"services.{name}"], dict(env or {}))


class Supervisor:
    """Starts processes, restarts one that exits unexpectedly, stops them all on request."""

    def __init__(
        self,
        specs: list[ProcessSpec],
        log_dir: Path | None = None,
        max_restarts: int = 5,
        restart_delay_s: float = 1.0,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.children = {spec.name: Supervised(spec) for spec in specs}
        self.log_dir = log_dir
        self.max_restarts = max_restarts
        self.restart_delay_s = restart_delay_s
        # Shared with the caller's signal handler, which may fire before the children start.
        self._stop = stop_event or threading.Event()

    def start_all(self) -> None:
        for child in self.children.values():
            self._start(child)

    def _start(self, child: Supervised) -> None:
        env = {**os.environ, **child.spec.env}
        out = (
            open(self.log_dir / f"{child.spec.name}.log", "ab")  # noqa: SIM115 - lives with child
            if self.log_dir
            else None
        )
        child.process = subprocess.Popen(
            child.spec.argv, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        child.last_start = time.monotonic()
        log.info("started %s (pid %s)", child.spec.name, child.process.pid)

    def check_once(self) -> list[str]:
        """Restart children that have exited; returns the names restarted."""
        restarted = []
        for child in self.children.values():
            proc = child.process
            if proc is None or child.failed or proc.poll() is None or self._stop.is_set():
                continue
            if proc.returncode == EXIT_CONFIG:
                self._give_up(child)
                continue
            if child.restarts >= self.max_restarts:
                raise RuntimeError(
                    f"{child.spec.name} exited with {proc.returncode} and was restarted "
                    f"{child.restarts} times already; giving up"
                )
            log.warning("%s exited with %s; restarting", child.spec.name, proc.returncode)
            child.restarts += 1
            time.sleep(self.restart_delay_s)
            self._start(child)
            restarted.append(child.spec.name)
        return restarted

    def _give_up(self, child: Supervised) -> None:
        child.failed = self._last_words(child) or f"exited with {EXIT_CONFIG}"
        log.error(
            "%s cannot start and is not restarted (configuration error, exit %d): %s",
            child.spec.name,
            EXIT_CONFIG,
            child.failed,
        )

    def _last_words(self, child: Supervised) -> str:
        """The last line the child wrote to its log: where a service says why it cannot start."""
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{child.spec.name}.log"
        if not path.is_file():
            return ""
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            lines = handle.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

    @property
    def failed(self) -> dict[str, str]:
        """Children given up on for a configuration error, with the reason each gave."""
        return {name: c.failed for name, c in self.children.items() if c.failed is not None}

    def request_stop(self) -> None:
        """Make `watch` return; the caller then calls `stop`."""
        self._stop.set()

    def watch(self, poll_s: float = 0.5) -> None:
        """Supervise until `stop()` (or Ctrl-C through the caller)."""
        while not self._stop.wait(poll_s):
            self.check_once()

    def stop(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every child (reverse start order), wait, then SIGKILL what is left."""
        self._stop.set()
        for child in reversed(list(self.children.values())):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for child in self.children.values():
            if not child.process:
                continue
            try:
                codes[child.spec.name] = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %ss; killing it", child.spec.name, timeout_s)
                child.process.kill()
                codes[child.spec.name] = child.process.wait()
        return codes
