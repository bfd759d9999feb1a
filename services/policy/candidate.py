"""The candidate: a student that passed the backtest gate, served beside the teacher as a second
model of the same KServe ModelServer (`<name>-candidate`) so that the simulator can ask it on
every live bar and book its decisions in a shadow account, before it serves anyone.

It shares the teacher's day cache: the frozen base is the same, so a shadow decision on a day
the teacher already decided costs only the candidate's trainable layers and heads. Until a
student is staged (`POST /v1/models/<name>-candidate:reload`) its `:status` is a 404 (and its
predict a 503, KServe's "not ready"), so a simulator can look every bar and trade in shadow
exactly while a candidate exists; `:retire` (after the trainer's verdict, either way) makes it
so again.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from kserve.errors import ModelNotFound

from services.policy.server import PolicyModel, ServedModel
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)

CANDIDATE_SUFFIX = "-candidate"


def candidate_name(model_name: str) -> str:
    return f"{model_name}{CANDIDATE_SUFFIX}"


class CandidateModel(PolicyModel):
    def __init__(self, settings: PolicySettings, teacher: PolicyModel) -> None:
        super().__init__(
            settings.model_copy(update={"model_name": candidate_name(settings.model_name)})
        )
        self.teacher = teacher

    def load(self) -> bool:
        """KServe calls this for a model that is not ready: no candidate staged is a 404."""
        if self._current is None:
            raise ModelNotFound(self.name)
        self.ready = True
        return True

    def _approval(self, folder: Path, manifest_bytes: bytes) -> None:
        """A candidate only trades in shadow: it serves nobody, so it needs no approval (its
        manifest's hashes and signature are still checked)."""
        return None

    @property
    def staged(self) -> bool:
        return self._current is not None

    def _swap(self, served: ServedModel) -> None:
        # The served model's metrics (version info, best-of-n) describe the teacher: untouched.
        teacher_model = self.teacher.current
        if teacher_model.day_cache is not None:
            served.model.attach_day_cache(cache=teacher_model.day_cache)
        self._current = served
        log.info("candidate %s in shadow beside %s", served.model.model_version,
                 teacher_model.model_version)  # fmt: skip

    async def stage(self, folder: Path) -> dict[str, str]:
        """Load and verify `folder` as the candidate (replacing any staged one)."""
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(None, self._load_verified, folder)
            previous = self._current.model.model_version if self._current else ""
            self._swap(served)
            self.ready = True
            return {"model_version": served.model.model_version, "previous_version": previous}

    def stage_now(self, folder: Path) -> str:
        """Load, verify and stage `folder` from a plain thread (the candidate pointer's
        watcher, services/policy/candidate_pointer.py); returns its version."""
        served = self._load_verified(folder)
        self._swap(served)
        self.ready = True
        return str(served.model.model_version)

    def retire(self) -> dict[str, str]:
        """Stop serving the candidate; the next request for it is a 404 again."""
        version = self._current.model.model_version if self._current else ""
        self._current, self.ready = None, False
        if version:
            log.info("candidate %s retired from shadow", version)
        return {"retired_version": version}
