"""`rlmf up`'s supervisor: a child that exits with EXIT_CONFIG is reported once, not restarted."""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.supervisor import EXIT_CONFIG, ProcessSpec, Supervisor
from tests.helpers import wait_until


def _child(code: int, says: str) -> ProcessSpec:
    script = f"import sys; print({says!r}, file=sys.stderr); sys.exit({code})"
    return ProcessSpec("svc", [sys.executable, "-c", script])


def test_a_configuration_error_is_reported_once_and_not_restarted(tmp_path: Path) -> None:
    sup = Supervisor(
        [_child(EXIT_CONFIG, "error: cannot serve models/x: it does not exist")],
        log_dir=tmp_path,
        restart_delay_s=0.0,
    )
    sup.start_all()
    wait_until(lambda: sup.children["svc"].process.poll() is not None, 15, "the child to exit")
    for _ in range(3):  # later checks must not restart it either
        assert sup.check_once() == []
    assert sup.failed == {"svc": "error: cannot serve models/x: it does not exist"}
    assert sup.children["svc"].restarts == 0
    assert sup.stop() == {"svc": EXIT_CONFIG}


def test_any_other_exit_is_restarted(tmp_path: Path) -> None:
    sup = Supervisor([_child(2, "broker unavailable")], log_dir=tmp_path, restart_delay_s=0.0)
    sup.start_all()
    assert wait_until(sup.check_once, 15, "the supervisor to restart the child") == ["svc"]
    assert sup.failed == {}
    sup.stop()
