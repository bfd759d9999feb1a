"""The candidate on a cluster: the policy server follows a pointer file on the models volume.

On one machine the trainer stages a candidate through the server's `:reload` route. On a
cluster that route is off, the policy runs as several pods, and the trainer is a CronJob that
cannot reach each pod; what every pod and the trainer share is the models volume. So the
trainer writes `<models>/candidate` (the candidate's folder name, as `current` names the
teacher's) and every pod follows it: a new name is loaded, verified (hash and signature) and
staged beside the teacher; a removed file retires the candidate. The simulator asks the
candidate on every bar, so every pod trades the same candidate in shadow within one poll.

A watcher thread, not the server's event loop: loading a model takes seconds, and KServe owns
the loop and its lifespan; the swap itself is one reference assignment.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from services.policy.candidate import CandidateModel

log = logging.getLogger(__name__)


class CandidatePointer:
    """Follows `pointer`: stages the folder it names (beside it) as `candidate`, retires the
    candidate when the file goes away. A folder that fails to load is logged once and left
    until the pointer names another."""

    def __init__(self, candidate: CandidateModel, pointer: Path, poll_s: float = 5.0) -> None:
        self.candidate, self.pointer, self.poll_s = candidate, pointer, poll_s
        self.following: str | None = None
        """The folder name last acted on (staged, or refused)."""
        self._stop = threading.Event()

    def named(self) -> str | None:
        """The folder name the pointer holds now; None without a pointer (or an empty one)."""
        try:
            name = self.pointer.read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def check_once(self) -> None:
        name = self.named()
        if name == self.following:
            return
        self.following = name
        if name is None:
            self.candidate.retire()
            return
        folder = self.pointer.parent / name
        try:
            staged = self.candidate.stage_now(folder)
        except Exception as exc:  # a bad folder must not stop the watcher: log it, keep going
            log.error("candidate %s named by %s refused: %s", folder, self.pointer, exc)
            return
        log.info("candidate %s staged from %s", staged, self.pointer)

    def start(self) -> threading.Thread:
        self.check_once()  # a candidate named before the server started is there at once
        thread = threading.Thread(target=self._run, name="candidate-pointer", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_once()
