"""The demo's stages, in order: broker, Feast, models, services, news, replay, training, stop.

Each stage prints one status line on stderr; long stages show a tqdm bar. The run's pids are
kept in OUT/pids.json (rewritten on every restart) so a test can kill a service mid-run, and
`kill_service`/`kill_after_bars` do the same from inside (the e2e test's hook).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO

import pandas as pd
from tqdm import tqdm

from services.common import topics
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import Producer, ensure_topics
from services.common.bus_reader import Tally, read_all, wait_drained
from services.common.envelope import derived_id
from services.common.settings import BusSettings
from services.demo.chaos import run_fingerprint
from services.demo.config import DemoConfig, DemoError, select_window, status
from services.demo.finish import finish
from services.demo.history import publish_history_bars, run_warm_up_cycle, warm_up_env
from services.demo.news import generate_news, news_item
from services.demo.pacing import TrainingPacer, pause_for_cycle, pause_for_verdict
from services.demo.processes import ServiceGroup
from services.demo.services_plan import module_argv, service_plans, simulator_env
from services.demo.state import RunState

SIMULATOR_STATE = "simulator-state.json"


class Demo:
    """Runs the stages; `run()` returns the process exit code."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.state = RunState()
        self.out = cfg.out.resolve()
        self.logs = self.out / "logs"
        self.broker: EmbeddedBroker | None = None
        self.services: ServiceGroup | None = None
        self._feast: tuple[subprocess.Popen[bytes], IO[bytes]] | None = None

    # -- stages -------------------------------------------------------------------------------

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        started = time.monotonic()
        fn()
        self.state.stage_seconds[name] = round(time.monotonic() - started, 1)

    def prepare_out(self) -> None:
        for sub in ("logs", "feast", "models", "plots"):
            shutil.rmtree(self.out / sub, ignore_errors=True)
        for name in (
            "report.html",
            "run.json",
            "pids.json",
            "accounting.json",
            "fingerprint.json",
            SIMULATOR_STATE,  # a stale state would make this run resume an older one
            "trainer/schedule.json",  # an older run's last cycle day would skip this run's
        ):
            (self.out / name).unlink(missing_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state.window = select_window(self.cfg)
        status(f"window: {self.state.window.description}")

    def start_broker(self) -> None:
        if self.cfg.bootstrap:
            self.state.bootstrap = self.cfg.bootstrap
            what = "an existing broker (--bootstrap)"
        else:
            self.broker = EmbeddedBroker(
                port=free_port(), log_path=self.logs / "broker.log"
            ).start()
            self.state.bootstrap = self.broker.bootstrap
            what = "tansu (in-memory)"
        ensure_topics(self.bus(), topics.all_topics_with_dlq(), "demo")
        if any(read_all(self.state.bootstrap, t, quiet_polls=1) for t in topics.ALL_TOPICS):
            raise DemoError(
                f"the broker at {self.state.bootstrap} already holds messages on the demo's "
                "topics; the accounting needs empty topics (use a fresh broker)"
            )
        status(f"broker: {what} on {self.state.bootstrap}, {len(topics.ALL_TOPICS)} topics + DLQs")

    def bus(self) -> BusSettings:
        return BusSettings(bootstrap=self.state.bootstrap, group_protocol="manual")

    def apply_feast(self) -> None:
        """`rlmf features apply` into OUT/feast, in a process of its own so that it runs beside
        the model preparation (both spend most of their time importing on a 2-core machine)."""
        assert self.state.window is not None
        env = {**os.environ, "RLMF_FEATURES_TICKERS": self.state.window.ticker}
        argv = [
            sys.executable,
            "-m",
            "services.cli",
            "features",
            "apply",
            "--data-dir",
            str(self.out / "feast"),
        ]
        log = open(self.logs / "feast-apply.log", "ab")  # noqa: SIM115 - closed in wait_feast
        self._feast = (subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        status("feast: applying the repo (SQLite online, Parquet offline) in the background")

    def wait_feast(self) -> None:
        assert self._feast is not None
        proc, log = self._feast
        code = proc.wait(timeout=self.cfg.settings.service_start_timeout_s)
        log.close()
        if code != 0:
            raise DemoError(f"feast apply exited with {code}; see {self.logs}/feast-apply.log")
        status(f"feast: repo applied in {self.out / 'feast'}")

    def prepare_models(self) -> None:
        from services.common.model_files import is_prepared, prepare_smollm2, save_tiny_llama

        smollm2 = prepare_smollm2(self.cfg.models_dir)
        if self.cfg.quick:
            tiny = self.cfg.models_dir / "tiny-llama"
            if not is_prepared(tiny):
                save_tiny_llama(tiny, smollm2, seed=self.cfg.settings.seed)
            self.state.base_model = tiny
            status(f"models: tiny random Llama (SmolLM2 tokenizer) at {tiny} (--quick)")
        else:
            self.state.base_model = smollm2
            status(f"models: SmolLM2-135M-Instruct at {smollm2}")

    def make_teacher(self) -> None:
        from services.policy.artifacts import init_artifact, teacher_config

        assert self.state.base_model is not None
        teacher = self.out / "models" / "policy" / "v0"
        manifest = init_artifact(
            self.state.base_model,
            teacher,
            "v0",
            teacher_config(self.cfg.settings.seed),
            overwrite=True,
        )
        # The trainer finds its teacher through the `current` pointer, which it moves on promotion.
        (teacher.parent / "current").write_text(teacher.name + "\n")
        self.state.teacher_dir = teacher
        status(f"teacher: artifact {manifest.version} ({len(manifest.files)} files) at {teacher}")

    def start_services(self) -> None:
        w, teacher = self.state.window, self.state.teacher_dir
        assert w is not None and teacher is not None
        plans = service_plans(self.cfg, w, self.state.bootstrap, teacher, self.out)
        self.state.plans = plans
        self.services = ServiceGroup(plans, self.out, self.state.notes)
        self.services.start(self.cfg.settings.service_start_timeout_s)

    # -- news ---------------------------------------------------------------------------------

    def publish_news(self) -> None:
        s, w = self.cfg.settings, self.state.window
        assert w is not None
        # One draw over the history and the window: the history's news is the same kind.
        days = pd.concat([w.history, w.frame]) if not w.history.empty else w.frame
        self.state.news = generate_news(
            days, w.ticker, s.news_informativeness, s.news_per_day, s.seed
        )
        producer = Producer(self.bus(), "demo-news")
        for draft in tqdm(self.state.news, desc="news", unit="item", file=sys.stderr):
            producer.publish(
                topics.NEWS_RAW,
                news_item(draft),
                key=draft.ticker,
                event_time=draft.published_at,
                id=derived_id("demo-news", draft.item_id),
            )
        producer.close()
        status(
            f"news: {len(self.state.news)} synthetic items published to {topics.NEWS_RAW} "
            f"(informativeness {s.news_informativeness}, seed {s.seed})"
        )
        self._drain([(topics.NEWS_RAW, "rlmf-sentiment")], "news enriched")
        self._drain([(topics.NEWS_ENRICHED, "rlmf-features")], "news in features")

    def _drain(self, pairs: list[tuple[str, str]], what: str) -> None:
        """Wait until each group committed as many offsets as its topic holds records."""
        assert self.services is not None
        try:
            ends = wait_drained(
                self.state.bootstrap,
                pairs,
                self.cfg.settings.drain_timeout_s,
                check=self.services.check_alive,
            )
        except TimeoutError as exc:
            raise DemoError(f"{what}: {exc}") from exc
        for topic, group in pairs:
            status(f"{what}: {group} committed all {ends[topic]} records of {topic}")

    # -- history ------------------------------------------------------------------------------

    def history(self) -> None:
        """The feed's history bars, then (when they hold a cycle's windows) the trainer's
        warm-up cycle on them, before the first replayed bar (services/demo/history.py)."""
        w = self.state.window
        assert w is not None
        if w.history.empty:
            return
        n = publish_history_bars(self.bus(), w)
        self.state.history_bars_published = n
        status(f"history: {n} bars before the window published to {topics.MARKET_BARS}")
        self._drain([(topics.MARKET_BARS, "rlmf-features")], "history in features")
        if not w.warm_up:
            status("history: too short for a training cycle's windows; no warm-up cycle")
            return
        status(
            f"history: the trainer's warm-up cycle on the bars up to {w.warm_up_day}, "
            f"the last {w.warm_up_holdout} held out in {w.warm_up_folds} walk-forward fold(s)"
        )
        minutes = None if self.cfg.quick else self.cfg.settings.warm_up_minutes
        warm_up = run_warm_up_cycle(
            warm_up_env(
                self.state.plans["trainer"].env,
                self.cfg.settings.warm_up_holdout_bars,
                self.cfg.warm_up_folds,
                minutes,
            ),
            w.warm_up_day,
            self.logs / "trainer-warm-up.log",
            self.cfg.settings.warm_up_timeout_s,
        )
        self.state.warm_up = warm_up
        status(f"history: {warm_up.summary()} in {warm_up.seconds:.0f}s")
        if warm_up.result is None:
            self.state.notes.append(
                f"{warm_up.summary()}; the teacher serves (see logs/trainer-warm-up.log)"
            )

    # -- replay -------------------------------------------------------------------------------

    def replay(self) -> None:
        w = self.state.window
        assert w is not None
        simulator = self._start_simulator()
        status(
            f"replay: simulator pid {simulator.pid} trading {len(w.frame)} bars through the policy"
        )
        self._follow_replay(len(w.frame))

    def _start_simulator(self) -> subprocess.Popen[bytes]:
        """The replaying simulator; it keeps its account in OUT/simulator-state.json, so a
        restart after a kill resumes at the bar it had reached."""
        w, services = self.state.window, self.services
        assert w is not None and services is not None
        env = simulator_env(
            self.cfg, w, self.state.bootstrap, self.state.plans["policy"].port, self.out
        )
        env["RLMF_SIMULATOR_STATE_FILE"] = str(self.out / SIMULATOR_STATE)
        with open(self.logs / "simulator.log", "ab") as log:  # the child keeps its own copy
            simulator = subprocess.Popen(
                module_argv("simulator"), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        services.simulator = simulator
        services.write_pids()
        return simulator

    def _follow_replay(self, total: int) -> None:
        assert self.services is not None
        deadline = time.monotonic() + self.cfg.settings.replay_timeout_s
        decisions = Tally(self.state.bootstrap, topics.TRADING_DECISIONS)
        feedback = Tally(self.state.bootstrap, topics.MARKET_FEEDBACK)
        promotions = Tally(self.state.bootstrap, topics.MODELS_PROMOTIONS)
        shadow = Tally(self.state.bootstrap, topics.TRADING_SHADOW)
        pacer = TrainingPacer(self.cfg.train_every_days, self.cfg.shadow_bars)
        try:
            with tqdm(total=total, desc="replay", unit="bar", file=sys.stderr) as bar:
                # The simulator is looked up on every turn: a chaos kill replaces it.
                while self._simulator().poll() is None or decisions.poll():
                    before = decisions.count
                    decisions.poll()
                    bar.update(decisions.count - before)
                    self._maybe_kill(decisions.count)
                    # Decisions first: a candidate staged by the cycle just waited for is
                    # known before the feedback that follows it is paced.
                    pacer.note_promotions(promotions.poll())
                    if pacer.stretch_complete(shadow.poll()):
                        self._pause_for_verdict(pacer)
                    if pacer.due(feedback.poll()):
                        self._pause_for_cycle(self._simulator(), pacer)
                    if time.monotonic() > deadline:
                        self._simulator().kill()
                        raise DemoError(
                            "replay did not finish within "
                            f"{self.cfg.settings.replay_timeout_s:.0f}s"
                        )
                    time.sleep(0.2)
                bar.update(decisions.count - bar.n)
        finally:
            for tally in (decisions, feedback, promotions, shadow):
                tally.close()
        simulator = self._simulator()
        self.state.simulator_exit = simulator.returncode
        if simulator.returncode != 0:
            raise DemoError(
                f"simulator exited with {simulator.returncode}; see {self.logs}/simulator.log"
            )
        status(f"replay: done, {decisions.count} decisions published")

    def _pause_for_cycle(self, simulator: subprocess.Popen[bytes], pacer: TrainingPacer) -> None:
        assert self.services is not None
        note = pause_for_cycle(
            simulator,
            self.state.bootstrap,
            pacer,
            self.logs / "trainer.log",
            self.cfg.settings.cycle_timeout_s,
            self.services.check_alive,
        )
        if note:
            self.state.notes.append(note)

    def _pause_for_verdict(self, pacer: TrainingPacer) -> None:
        assert self.services is not None and pacer.candidate is not None
        note = pause_for_verdict(
            self._simulator(),
            self.state.bootstrap,
            pacer.candidate,
            self.cfg.settings.cycle_timeout_s,
            self.services.check_alive,
        )
        if note:
            self.state.notes.append(note)

    def _simulator(self) -> subprocess.Popen[bytes]:
        assert self.services is not None and self.services.simulator is not None
        return self.services.simulator

    def _maybe_kill(self, bars_done: int) -> None:
        name = self.cfg.kill_service
        if not name or self.state.killed or bars_done < self.cfg.kill_bar:
            return
        assert self.services is not None
        if name == "simulator":
            # The replaying simulator is the demo's own child, not the supervisor's.
            old = self._simulator()
            old.kill()
            old.wait()
            pid, new = old.pid, self._start_simulator()
            restarted_by = f"the demo restarts it (pid {new.pid}) from its state file"
        else:
            pid, restarted_by = self.services.kill(name), "the supervisor restarts it"
        self.state.killed.append({"service": name, "pid": pid, "after_bars": bars_done})
        status(f"chaos: SIGKILL {name} (pid {pid}) after {bars_done} bars; {restarted_by}")

    def write_fingerprint(self) -> None:
        """OUT/fingerprint.json: what a chaos run must share with the run without a kill."""
        path = self.out / "fingerprint.json"
        path.write_text(json.dumps(run_fingerprint(self.state.bootstrap), indent=1))
        status(f"fingerprint: {path} (bench/chaos.py compares runs by it)")

    # -- training and stop --------------------------------------------------------------------

    def wait_training(self) -> None:
        self._drain([(topics.MARKET_FEEDBACK, "rlmf-trainer")], "feedback in trainer")
        # Every cycle that came due was waited for during the replay (the market paused).
        n = len(read_all(self.state.bootstrap, topics.MODELS_PROMOTIONS))
        status(f"training: {n} promotion decisions on {topics.MODELS_PROMOTIONS}")

    def stop(self) -> None:
        """SIGTERM every service (the supervisor's reverse order) and keep their exit codes."""
        if self.services is None:
            return
        if not self.state.exit_codes:
            self.state.restarts, self.state.exit_codes = self.services.stop()
            status(f"stopped services with SIGTERM: exit codes {self.state.exit_codes}")
        simulator = self.services.simulator
        if simulator is not None and simulator.poll() is None:
            simulator.terminate()
            simulator.wait(timeout=20)

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        status(
            f"scenario {self.cfg.scenario}{' (quick)' if self.cfg.quick else ''}, out {self.out}"
        )
        try:
            for name, fn in (
                ("prepare", self.prepare_out),
                ("broker", self.start_broker),
                ("feast", self.apply_feast),
                ("models", self.prepare_models),
                ("teacher", self.make_teacher),
                ("feast-wait", self.wait_feast),
                ("services", self.start_services),
                ("news", self.publish_news),
                ("history", self.history),
                ("replay", self.replay),
                ("training", self.wait_training),
            ):
                self.stage(name, fn)
            self.stop()  # services first: their last commits are part of the accounting
            self.write_fingerprint()
            return finish(self.state, self.cfg, self.out)
        except DemoError as exc:
            status(f"error: {exc}")
            return 2
        finally:
            self.stop()
            self.stop_broker()
