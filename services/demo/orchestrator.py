"""The demo's stages, in order: broker, Feast, models, services, news, replay, training, stop.

Each stage prints one status line on stderr; long stages show a tqdm bar. The run's pids are
kept in OUT/pids.json (rewritten on every restart) so a test can kill a service mid-run, and
`kill_service`/`kill_after_bars` do the same from inside (the e2e test's hook).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from tqdm import tqdm

from services.common import envelope as envelopes
from services.common import topics
from services.common.broker import EmbeddedBroker, free_port
from services.common.bus import Producer, ensure_topics
from services.common.envelope import derived_id, set_time
from services.common.pb.rlmf.v1 import payloads_pb2 as pb
from services.common.settings import BusSettings
from services.common.supervisor import Supervisor
from services.demo.bus_reader import Tally, TopicRecord, committed_offsets, read_all
from services.demo.news import SOURCE_NAME, NewsDraft, generate_news
from services.demo.services_plan import (
    ServicePlan,
    common_env,
    has_entrypoint,
    module_argv,
    policy_plan,
)
from services.demo.settings import DemoSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("real", "regime-shift")


class DemoError(RuntimeError):
    """A stage failed; the message says which and why."""


def status(line: str) -> None:
    """One line per stage on stderr, timestamped from the run's start."""
    print(f"[demo {time.monotonic() - _T0:7.1f}s] {line}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


@dataclass
class DemoConfig:
    scenario: str
    quick: bool
    out: Path
    settings: DemoSettings = field(default_factory=DemoSettings)
    kill_service: str | None = None
    kill_after_bars: int = 0
    bootstrap: str | None = None
    """Use this running Kafka (e.g. a test's broker) instead of starting the embedded one."""
    models_dir: Path = field(default_factory=lambda: _models_dir())

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise DemoError(
                f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}"
            )

    @property
    def bars(self) -> int:
        return (
            self.settings.quick_bars
            if self.quick
            else (self.settings.bars if self.scenario == "real" else self.settings.regime_days)
        )

    @property
    def train_every(self) -> int:
        """Bars between trainer cycles: a third of the window, so two cycles run in the replay."""
        return self.settings.train_every_bars or max(10, self.bars // 3)

    @cached_property
    def train_every_days(self) -> int:
        """The same in calendar days (the trainer's unit): the span of `train_every` bars."""
        window = select_window(self)
        idx = window.frame.index
        return int((idx[min(self.train_every, len(idx) - 1)] - idx[0]).days)


@dataclass
class Window:
    """The bars replayed: the simulator settings that select them and the frame itself."""

    frame: pd.DataFrame
    ticker: str
    simulator_env: dict[str, str]
    description: str
    data_file: Path | None = None


def select_window(cfg: DemoConfig) -> Window:
    """The last `bars` rows of the real CSV, or the regime-shift generator's series."""
    from services.market.market_data import load_prices_csv
    from services.market.regime_market import generate_market, load_params

    s = cfg.settings
    if cfg.scenario == "real":
        path = (REPO_ROOT / s.prices_csv).resolve()
        full = load_prices_csv(path)
        start = max(0, len(full) - cfg.bars)
        frame = full.iloc[start:]
        env = {
            "RLMF_SIMULATOR_PRICES_CSV": str(path),
            "RLMF_SIMULATOR_START_BAR": str(start),
            "RLMF_SIMULATOR_MAX_BARS": str(cfg.bars),
            "RLMF_SIMULATOR_TICKER": s.ticker,
        }
        desc = (
            f"real daily {s.ticker} bars from {path.name}, rows {start}..{len(full) - 1} "
            f"({frame.index[0]:%Y-%m-%d} to {frame.index[-1]:%Y-%m-%d}, {len(frame)} bars)"
        )
        return Window(frame, s.ticker, env, desc, path)
    params = load_params("regime-shift")
    frame, _ = generate_market(params, cfg.bars, s.seed)
    env = {"RLMF_SIMULATOR_SCENARIO": "regime-shift", "RLMF_SIMULATOR_DAYS": str(cfg.bars)}
    desc = (
        f"synthetic regime-switching market (scenario regime-shift, seed {s.seed}, "
        f"{cfg.bars} bars, ticker {params.ticker}): not real prices"
    )
    return Window(frame, params.ticker, env, desc)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What the stages leave for the report."""

    cfg: DemoConfig
    window: Window | None = None
    bootstrap: str = ""
    plans: dict[str, ServicePlan] = field(default_factory=dict)
    base_model: Path | None = None
    teacher_dir: Path | None = None
    news: list[NewsDraft] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    killed: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    simulator_exit: int | None = None
    news_topic: str = topics.NEWS_RAW


class Demo:
    """Runs the stages; `run()` returns the process exit code."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.state = RunState(cfg)
        self.out = cfg.out.resolve()
        self.logs = self.out / "logs"
        self.broker: EmbeddedBroker | None = None
        self.supervisor: Supervisor | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- stages -------------------------------------------------------------------------------

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        started = time.monotonic()
        fn()
        self.state.stage_seconds[name] = round(time.monotonic() - started, 1)

    def prepare_out(self) -> None:
        for sub in ("logs", "feast", "models", "plots"):
            shutil.rmtree(self.out / sub, ignore_errors=True)
        for name in ("report.html", "run.json", "pids.json", "accounting.json"):
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

    _feast: tuple[subprocess.Popen[bytes], Any] | None = None

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
        from services.policy.actor_critic import ActorCriticConfig
        from services.policy.artifacts import init_artifact

        assert self.state.base_model is not None
        teacher = self.out / "models" / "policy" / "v0"
        manifest = init_artifact(
            self.state.base_model,
            teacher,
            "v0",
            ActorCriticConfig(seed=self.cfg.settings.seed),
            overwrite=True,
        )
        self.state.teacher_dir = teacher
        status(f"teacher: artifact {manifest.version} ({len(manifest.files)} files) at {teacher}")

    # -- services -----------------------------------------------------------------------------

    def service_plans(self) -> dict[str, ServicePlan]:
        """The long-running services, in data-flow order; the simulator runs separately."""
        s, w = self.cfg.settings, self.state.window
        assert w is not None and self.state.teacher_dir is not None
        plans: dict[str, ServicePlan] = {}
        feast_env = {
            "RLMF_FEATURES_DATA_DIR": str(self.out / "feast"),
            "RLMF_FEATURES_TICKERS": w.ticker,
            "RLMF_FEATURES_APPLY_ON_START": "false",
        }  # the demo applied it (stage feast)
        if has_entrypoint("sentiment"):
            plans["sentiment"] = self._plan("sentiment", self._sentiment_env())
        else:
            self.state.notes.append(
                "services.sentiment has no entrypoint yet: the demo scored the "
                "synthetic news with the VADER lexicon scorer itself"
            )
        plans["features"] = self._plan("features", feast_env)
        plans["policy"] = policy_plan(self.state.bootstrap, s.seed, self.state.teacher_dir)
        if has_entrypoint("trainer"):
            plans["trainer"] = self._plan("trainer", self._trainer_env())
        else:
            self.state.notes.append(
                "services.trainer has no entrypoint yet: no training cycle "
                "and no promotion decision could run"
            )
        return plans

    def _plan(self, name: str, extra: dict[str, str]) -> ServicePlan:
        port = free_port()
        env = common_env(self.state.bootstrap, self.cfg.settings.seed, port) | extra
        return ServicePlan(name, module_argv(name), env, port)

    def _sentiment_env(self) -> dict[str, str]:
        """--quick scores with VADER; the full demo with SmolLM2 (services/sentiment/settings.py).
        Per-day LLM summaries are off: generating them for two years of days would double the
        demo's time on 2 cores; the policy sees the day's headlines instead."""
        return {
            "RLMF_SENTIMENT_BACKEND": "lexicon" if self.cfg.quick else "llm",
            "RLMF_SENTIMENT_MODEL_DIR": str(self.cfg.models_dir / "SmolLM2-135M-Instruct"),
            "RLMF_SENTIMENT_SUMMARIES": "false",
            "RLMF_SENTIMENT_THREADS": "1",
        }

    def _trainer_env(self) -> dict[str, str]:
        """The trainer's settings (services/trainer/settings.py) for this window."""
        assert self.state.teacher_dir is not None and self.state.window is not None
        w, s, cfg = self.state.window, self.cfg.settings, self.cfg
        policy = self.state.plans.get("policy")
        models = self.state.teacher_dir.parent
        # The trainer finds its teacher through the `current` pointer, which it moves on promotion.
        (models / "current").write_text(self.state.teacher_dir.name + "\n")
        every = cfg.train_every
        env = {
            "RLMF_TRAINER_MODELS_DIR": str(models),
            "RLMF_TRAINER_WORK_DIR": str(self.out / "trainer"),
            "RLMF_TRAINER_CYCLE_EVERY_DAYS": str(cfg.train_every_days),
            "RLMF_TRAINER_TRAIN_DAYS": str(max(10, every - 5)),
            "RLMF_TRAINER_EVAL_DAYS": str(max(5, min(20, every // 3))),
            "RLMF_TRAINER_PPO_STEPS": "40" if cfg.quick else "160",
            "RLMF_TRAINER_PPO_NUM_STEPS": "20" if cfg.quick else "40",
            "RLMF_TRAINER_PPO_MINIBATCH_SIZE": "10" if cfg.quick else "32",
            "RLMF_TRAINER_PPO_GRADIENT_ACCUMULATION_STEPS": "1" if cfg.quick else "8",
            # The replay is paused while a cycle trains, so the trainer may use both cores.
            "RLMF_TRAINER_TORCH_THREADS": "1" if cfg.quick else "2",
            "RLMF_TRAINER_PROMOTION": "embedded",
            "RLMF_TRAINER_POLICY_URL": f"http://127.0.0.1:{policy.port}" if policy else "",
            "RLMF_TRAINER_SEED": str(s.seed),
            "RLMF_TRAINER_TICKER": w.ticker,
            "RLMF_FEATURES_DATA_DIR": str(self.out / "feast"),
            # The simulator's states carry the features service's features (features_reader);
            # the trainer's training and held-out states read the same ones, point in time.
            "RLMF_TRAINER_FEATURES_SOURCE": "feast",
        }
        if w.data_file is not None:
            env["RLMF_TRAINER_PRICES_CSV"] = str(w.data_file)
        else:
            env |= {
                "RLMF_TRAINER_MARKET_SCENARIO": "regime-shift",
                "RLMF_TRAINER_MARKET_DAYS": str(len(w.frame)),
                "RLMF_TRAINER_MARKET_SEED": str(s.seed),
            }
        return env

    def start_services(self) -> None:
        plans = self.service_plans()
        if "trainer" in plans:  # it needs the policy's URL, known once the policy's port is
            self.state.plans = plans
            plans["trainer"] = self._plan("trainer", self._trainer_env())
        self.state.plans = plans
        self.supervisor = Supervisor(
            [p.spec() for p in plans.values()],
            log_dir=self.logs,
            max_restarts=3,
            restart_delay_s=0.5,
        )
        self.supervisor.start_all()
        self._write_pids()
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()
        status(f"services: started {', '.join(plans)} (logs in {self.logs})")
        self._wait_ready(plans)

    def _watch(self) -> None:
        """Restart what dies (the Supervisor's rule), keep pids.json current."""
        assert self.supervisor is not None
        while not self._watch_stop.wait(0.3):
            try:
                restarted = self.supervisor.check_once()
            except RuntimeError as exc:
                status(f"supervisor gave up: {exc}")
                self.state.notes.append(f"supervisor gave up: {exc}")
                return
            if restarted:
                status(f"restarted {', '.join(restarted)}")
                self._write_pids()

    def _write_pids(self) -> None:
        assert self.supervisor is not None
        with self._lock:
            pids = {n: c.process.pid for n, c in self.supervisor.children.items() if c.process}
            if self._simulator is not None:
                pids["simulator"] = self._simulator.pid
            tmp = self.out / "pids.json.tmp"
            tmp.write_text(json.dumps(pids))
            tmp.replace(self.out / "pids.json")

    _simulator: subprocess.Popen[bytes] | None = None

    def _wait_ready(self, plans: dict[str, ServicePlan]) -> None:
        deadline = time.monotonic() + self.cfg.settings.service_start_timeout_s
        pending = dict(plans)
        with tqdm(total=len(plans), desc="services ready", unit="svc", file=sys.stderr) as bar:
            while pending:
                for name, plan in list(pending.items()):
                    if _answers(plan.ready_url):
                        pending.pop(name)
                        bar.update(1)
                self._check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"not ready after {self.cfg.settings.service_start_timeout_s:.0f}s: "
                        f"{', '.join(pending)} (see {self.logs}/<service>.log)"
                    )
                time.sleep(0.5)
        status("services: all ready")

    def _check_alive(self) -> None:
        assert self.supervisor is not None
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

    # -- news ---------------------------------------------------------------------------------

    def publish_news(self) -> None:
        s, w = self.cfg.settings, self.state.window
        assert w is not None
        self.state.news = generate_news(
            w.frame, w.ticker, s.news_informativeness, s.news_per_day, s.seed
        )
        producer = Producer(self.bus(), "demo-news")
        topic = topics.NEWS_RAW if "sentiment" in self.state.plans else topics.NEWS_ENRICHED
        self.state.news_topic = topic
        scorer = None if topic == topics.NEWS_RAW else _lexicon()
        for draft in tqdm(self.state.news, desc="news", unit="item", file=sys.stderr):
            item = _news_item(draft)
            payload: Any = item if scorer is None else _enrich(item, scorer)
            producer.publish(
                topic,
                payload,
                key=draft.ticker,
                event_time=draft.published_at,
                id=derived_id("demo-news", draft.item_id),
            )
        producer.close()
        status(
            f"news: {len(self.state.news)} synthetic items published to {topic} "
            f"(informativeness {s.news_informativeness}, seed {s.seed})"
        )
        self._drain(
            [(topics.NEWS_RAW, "rlmf-sentiment")] if scorer is None else [], "news enriched"
        )
        self._drain([(topics.NEWS_ENRICHED, "rlmf-features")], "news in features")

    def _drain(self, pairs: list[tuple[str, str]], what: str) -> None:
        """Wait until each group committed as many offsets as its topic holds records."""
        deadline = time.monotonic() + self.cfg.settings.drain_timeout_s
        for topic, group in pairs:
            while True:
                end = len(read_all(self.state.bootstrap, topic, quiet_polls=1))
                done = sum(committed_offsets(self.state.bootstrap, group, topic).values())
                if done >= end:
                    break
                self._check_alive()
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"{what}: {group} committed {done} of {end} on {topic} after "
                        f"{self.cfg.settings.drain_timeout_s:.0f}s"
                    )
                time.sleep(1.0)
            status(f"{what}: {group} committed all {end} records of {topic}")

    # -- replay -------------------------------------------------------------------------------

    def replay(self) -> None:
        w, s = self.state.window, self.cfg.settings
        assert w is not None and self.supervisor is not None
        port = free_port()
        env = {
            **os.environ,
            **common_env(self.state.bootstrap, s.seed, port),
            **w.simulator_env,
            "RLMF_SIMULATOR_MODE": "replay",
            "RLMF_SIMULATOR_SEED": str(s.seed),
            "RLMF_SIMULATOR_POLICY_URL": f"http://127.0.0.1:{self.state.plans['policy'].port}",
            "RLMF_SIMULATOR_POLICY_TIMEOUT_S": "60",
            # A rationale (SEP's explain step) on a few decisions, for the report.
            "RLMF_SIMULATOR_EXPLAIN_EVERY": "10" if self.cfg.quick else "50",
            "RLMF_SIMULATOR_FEATURES_READER": "services.demo.features_reader:read",
            "RLMF_SIMULATOR_FEATURES_TIMEOUT_S": str(s.features_timeout_s),
            "RLMF_FEATURES_DATA_DIR": str(self.out / "feast"),
            "RLMF_FEATURES_TICKERS": w.ticker,
        }
        log = open(self.logs / "simulator.log", "ab")  # noqa: SIM115 - closed below
        self._simulator = subprocess.Popen(
            module_argv("simulator"), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self._write_pids()
        status(
            f"replay: simulator pid {self._simulator.pid} trading {len(w.frame)} bars"
            " through the policy"
        )
        try:
            self._follow_replay(len(w.frame))
        finally:
            log.close()

    def _follow_replay(self, total: int) -> None:
        assert self._simulator is not None
        deadline = time.monotonic() + self.cfg.settings.replay_timeout_s
        decisions = Tally(self.state.bootstrap, topics.TRADING_DECISIONS)
        feedback = Tally(self.state.bootstrap, topics.MARKET_FEEDBACK)
        pacer = TrainingPacer(self.cfg.train_every_days) if "trainer" in self.state.plans else None
        try:
            with tqdm(total=total, desc="replay", unit="bar", file=sys.stderr) as bar:
                while self._simulator.poll() is None or decisions.poll():
                    before = decisions.count
                    decisions.poll()
                    bar.update(decisions.count - before)
                    self._maybe_kill(decisions.count)
                    if pacer is not None and pacer.due(feedback.poll()):
                        self._pause_for_cycle(pacer)
                    if time.monotonic() > deadline:
                        self._simulator.kill()
                        raise DemoError(
                            "replay did not finish within "
                            f"{self.cfg.settings.replay_timeout_s:.0f}s"
                        )
                    time.sleep(0.2)
                bar.update(decisions.count - bar.n)
        finally:
            decisions.close()
            feedback.close()
        self.state.simulator_exit = self._simulator.returncode
        if self._simulator.returncode != 0:
            raise DemoError(
                f"simulator exited with {self._simulator.returncode}; see {self.logs}/simulator.log"
            )
        status(f"replay: done, {decisions.count} decisions published")

    def _pause_for_cycle(self, pacer: TrainingPacer) -> None:
        """Hold the market (SIGSTOP the replay) while the trainer runs the cycle that just came
        due, so the next bars are decided by whatever that cycle promotes, as in a market that
        waits for its nightly training; resume (SIGCONT) when its promotion decision is out."""
        assert self._simulator is not None
        promotions = Tally(self.state.bootstrap, topics.MODELS_PROMOTIONS)
        while promotions.poll():  # what earlier cycles published
            pass
        before = promotions.count
        self._simulator.send_signal(signal.SIGSTOP)
        status(
            f"training: cycle due at {pacer.last_cycle_day}; market paused while the trainer trains"
        )
        deadline = time.monotonic() + self.cfg.settings.cycle_timeout_s
        try:
            while not promotions.poll() and promotions.count <= before:
                if time.monotonic() > deadline or _log_says(
                    self.logs / "trainer.log", "cycle failed", pacer.log_offset
                ):
                    self.state.notes.append(
                        f"the cycle due at {pacer.last_cycle_day} published no promotion "
                        f"decision (failed or over {self.cfg.settings.cycle_timeout_s:.0f}s)"
                    )
                    status(
                        "training: no promotion decision from this cycle;"
                        " resuming (see trainer.log)"
                    )
                    return
                self._check_alive()
                time.sleep(1.0)
            status("training: promotion decision published; market resumed")
        finally:
            promotions.close()
            pacer.log_offset = _log_size(self.logs / "trainer.log")
            self._simulator.send_signal(signal.SIGCONT)

    def _maybe_kill(self, bars_done: int) -> None:
        name = self.cfg.kill_service
        if not name or self.state.killed or bars_done < self.cfg.kill_after_bars:
            return
        assert self.supervisor is not None
        child = self.supervisor.children.get(name)
        if child is None or child.process is None:
            raise DemoError(
                f"--kill-service {name}: no such running service"
                f" ({', '.join(self.supervisor.children)})"
            )
        pid = child.process.pid
        os.kill(pid, signal.SIGKILL)
        self.state.killed.append({"service": name, "pid": pid, "after_bars": bars_done})
        status(
            f"chaos: SIGKILL {name} (pid {pid}) after {bars_done} bars; the supervisor restarts it"
        )

    # -- training and stop --------------------------------------------------------------------

    def wait_training(self) -> None:
        if "trainer" not in self.state.plans:
            status("training: no trainer service; skipped")
            return
        self._drain([(topics.MARKET_FEEDBACK, "rlmf-trainer")], "feedback in trainer")
        # Every cycle that came due was waited for during the replay (the market paused).
        n = len(read_all(self.state.bootstrap, topics.MODELS_PROMOTIONS))
        status(f"training: {n} promotion decisions on {topics.MODELS_PROMOTIONS}")

    def stop(self) -> None:
        """SIGTERM every service (the supervisor's reverse order) and keep their exit codes."""
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        if self.supervisor is not None and not self.state.exit_codes:
            self.state.restarts = {n: c.restarts for n, c in self.supervisor.children.items()}
            self.state.exit_codes = self.supervisor.stop()
            status(f"stopped services with SIGTERM: exit codes {self.state.exit_codes}")
        if self._simulator is not None and self._simulator.poll() is None:
            self._simulator.terminate()
            self._simulator.wait(timeout=20)

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def run(self) -> int:
        from services.demo.finish import finish

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
                ("replay", self.replay),
                ("training", self.wait_training),
            ):
                self.stage(name, fn)
            self.stop()  # services first: their last commits are part of the accounting
            return finish(self)
        except DemoError as exc:
            status(f"error: {exc}")
            return 2
        finally:
            self.stop()
            self.stop_broker()


def _models_dir() -> Path:
    """RLMF_MODELS_DIR (as `rlmf models prepare` uses it), else the repository's models/."""
    env = os.environ.get("RLMF_MODELS_DIR")
    return Path(env).resolve() if env else REPO_ROOT / "models"


class TrainingPacer:
    """Mirrors the trainer's schedule (services/trainer/service.py, Scheduler.due): a cycle is
    due at the first feedback day `every_days` calendar days after the previous cycle's day
    (or after the first feedback day)."""

    def __init__(self, every_days: int) -> None:
        self.every_days = every_days
        self.first_day: date | None = None
        self.last_cycle_day: date | None = None
        self.log_offset = 0

    def due(self, records: list[TopicRecord]) -> bool:
        hit = False
        for rec in records:
            day = (
                envelopes.decode(rec.value, pb.MarketFeedback)
                .payload.decision_time.ToDatetime()
                .date()
            )
            self.first_day = self.first_day or day
            first = self.last_cycle_day or self.first_day
            if (day - first).days >= self.every_days:
                self.last_cycle_day, hit = day, True
        return hit


def _log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _log_says(path: Path, text: str, offset: int) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        return text.encode() in f.read()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _news_item(draft: NewsDraft) -> pb.NewsItem:
    item = pb.NewsItem(
        item_id=draft.item_id,
        ticker=draft.ticker,
        headline=draft.headline,
        body="",
        source_name=SOURCE_NAME,
        synthetic=True,
    )
    set_time(item.published_at, draft.published_at)
    return item


def _lexicon() -> Any:
    from services.sentiment.scorer import LexiconScorer

    return LexiconScorer()


def _enrich(item: pb.NewsItem, scorer: Any) -> pb.EnrichedNews:
    score = scorer.score([item.headline])[0]
    out = pb.EnrichedNews(
        summary=item.headline,
        sentiment=score.sentiment,
        model_name=scorer.name,
        model_version=scorer.version,
    )
    out.item.CopyFrom(item)
    out.label_probabilities.update(score.probabilities)
    return out
