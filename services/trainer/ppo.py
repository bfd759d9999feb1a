"""PPO with the RLMF objective for an LLM actor-critic, CleanRL style, read top to bottom.

trl 1.16 ships no PPOTrainer (not in trl.experimental either), so the loop is written once here,
following cleanrl/ppo.py: one dataclass of hyperparameters (FLAG-Trader's Table 3 defaults),
small helpers, then rollout -> GAE -> clipped update. What RLMF adds:
  loss = -L_RL + mf_coef * L_MF + kl_coef * KL(student || frozen teacher)
where -L_RL is PPO's clipped policy loss + value loss - entropy bonus and L_MF is the
cross-entropy of the student's action distribution against the realised market move's label
(up -> buy, down -> sell, flat -> hold), the market feedback itself. L_MF covers two sources:
  - the rollout's own steps (the move that followed each state in the env), and
  - D_MF (`FeedbackSet`): the (state, realised next move) pairs of market.feedback.v1 records,
    the states the serving policy really saw. Each PPO minibatch samples `mf_minibatch_size`
    of them and spreads them over its micro-batches; a micro-batch's L_MF is the mean
    cross-entropy over its rollout samples and its share of D_MF.
Without feedback records (or with mf_coef or mf_minibatch_size 0) L_MF is the rollout's alone.

The base is frozen, so the hidden states that enter the trainable top layers do not change
during an update: the rollout computes them once per sample (`agent.base_hidden`), D_MF once
per record before training (`encode_feedback`), and the update runs only `agent.head_forward`
on them, across every epoch and minibatch.

One file on purpose (over the layout's 600 lines): like cleanrl/ppo.py, the algorithm is meant
to be read top to bottom in one place, hyperparameters to update, with the RLMF additions
(D_MF, the market-feedback phase `fit_market_feedback`, the budget and progress) beside the
lines they change.

There is no dropout setting (FLAG-Trader's default is 0.0): the rollout's log-probabilities come
from the model in eval mode, so dropout in the update would make the PPO ratio differ from 1
before any step, and the policy's last-position attention does not apply attention dropout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

from services.common.market_state import ACTIONS, MarketState
from services.trainer import checkpoint

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0
"""Longest wall-clock gap between progress reports: a rollout or an update can take minutes."""

SELL, HOLD, BUY = (ACTIONS.index(a) for a in ("sell", "hold", "buy"))


@dataclass
class PPOArgs:
    """PPO + RLMF hyperparameters; defaults are FLAG-Trader's Table 3 unless marked RLMF."""

    seed: int = 1
    """seed of the run: action sampling, minibatch shuffling and env resets all derive from it"""
    total_timesteps: int = 13860
    """total environment steps of the run"""
    learning_rate: float = 5e-5
    """learning rate of the AdamW optimizer"""
    num_envs: int = 1
    """parallel environments (the text policy steps one env at a time; only 1 is supported)"""
    num_steps: int = 40
    """steps per rollout before each update"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over the run"""
    gamma: float = 0.95
    """discount factor"""
    gae_lambda: float = 0.98
    """lambda of generalised advantage estimation"""
    update_epochs: int = 1
    """epochs over each rollout"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.2
    """surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss as in the PPO paper"""
    ent_coef: float = 0.05
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    kl_coef: float = 0.05
    """coefficient of KL(student || frozen teacher) per state"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    target_kl: float | None = None
    """stop the epoch early when approx KL exceeds this (None: never)"""
    train_dtype: str = "float32"
    """dtype of the trainable parameters (FLAG-Trader float16 on GPU; float32 on CPU)"""
    gradient_accumulation_steps: int = 8
    """micro-batches per minibatch; one optimizer step per minibatch"""
    minibatch_size: int = 32
    """samples per minibatch"""
    max_episode_steps: int = 65
    """episode length cap: the rollout truncates (and bootstraps) an episode at this many steps"""
    mf_coef: float = 1.0
    """RLMF: gamma, the weight of the market-feedback prediction loss L_MF"""
    mf_flat_threshold: float = 0.0
    """RLMF: |realised return| at or below this labels the move `hold`"""
    mf_minibatch_size: int = 32
    """RLMF addition: D_MF (market-feedback) examples sampled into each minibatch's L_MF
    (0: L_MF from the rollout's own moves only)"""
    reuse_hidden: bool = True
    """compute frozen-base hidden states once per rollout sample and reuse them in the update"""
    checkpoint_every: int = 1
    """iterations between resumable checkpoints (when a checkpoint folder is given)"""

    # derived in `derive()`, like CleanRL does right after parsing
    batch_size: int = field(default=0, init=False)
    """samples per rollout (num_envs * num_steps)"""
    num_iterations: int = field(default=0, init=False)
    """rollout/update iterations in the run"""
    micro_batch_size: int = field(default=0, init=False)
    """samples per gradient-accumulation micro-batch"""

    def derive(self) -> PPOArgs:
        if self.num_envs != 1:
            raise ValueError("num_envs must be 1: the text policy steps one environment")
        if self.minibatch_size % self.gradient_accumulation_steps:
            raise ValueError("minibatch_size must be a multiple of gradient_accumulation_steps")
        self.batch_size = self.num_envs * self.num_steps
        self.num_iterations = max(1, self.total_timesteps // self.batch_size)
        self.micro_batch_size = self.minibatch_size // self.gradient_accumulation_steps
        return self


class ActorCritic(Protocol):
    """What the loop needs from the policy (services.policy.actor_critic.LLMActorCritic)."""

    def base_hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor: ...

    def head_forward(self, hidden: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]: ...

    def parameters(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


class StateEnv(Protocol):
    """A gymnasium env over the discrete {sell, hold, buy} actions that can show its state."""

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]: ...

    def current_state(self) -> MarketState: ...


Encoder = Callable[[MarketState], tuple[Tensor, Tensor]]
"""MarketState -> (input_ids [1, T], attention_mask [1, T]); T may differ between states."""


# ---------------------------------------------------------------------------------------------
# Helpers: the math, each testable on its own
# ---------------------------------------------------------------------------------------------


def move_label(realised_return: float, flat_threshold: float = 0.0) -> int:
    """The action the realised move rewarded: up -> buy, down -> sell, flat -> hold."""
    if realised_return > flat_threshold:
        return BUY
    if realised_return < -flat_threshold:
        return SELL
    return HOLD


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    next_value: Tensor,
    next_done: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over one rollout (CleanRL's loop, [T] tensors).

    dones[t] is 1 when the observation at step t started a new episode, as in CleanRL.
    Returns (advantages, returns).
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        if t == steps - 1:
            nextnonterminal = 1.0 - next_done
            nextvalues = next_value
        else:
            nextnonterminal = 1.0 - dones[t + 1]
            nextvalues = values[t + 1]
        delta = rewards[t] + gamma * nextvalues * nextnonterminal - values[t]
        lastgaelam = delta + gamma * gae_lambda * nextnonterminal * lastgaelam
        advantages[t] = lastgaelam
    return advantages, advantages + values


def normalise_advantages(advantages: Tensor) -> Tensor:
    """CleanRL's per-minibatch normalisation: (A - mean) / (std + 1e-8), std unbiased.

    A single sample is returned as it is: it has no spread to scale by, and centring it would
    zero its only advantage, silently switching off the policy gradient for that minibatch.
    """
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


@dataclass
class LossParts:
    loss: Tensor
    pg_loss: Tensor
    v_loss: Tensor
    entropy: Tensor
    mf_loss: Tensor
    kl_teacher: Tensor
    approx_kl: Tensor
    clipfrac: Tensor


def kl_to_teacher(logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(student || frozen teacher) over the actions, the mean over rows."""
    log_p = F.log_softmax(logits, dim=-1)
    log_q = F.log_softmax(teacher_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def rlmf_loss(
    logits: Tensor,
    newvalue: Tensor,
    *,
    actions: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    old_values: Tensor,
    move_labels: Tensor,
    teacher_logits: Tensor,
    args: PPOArgs,
    feedback_logits: Tensor | None = None,
    feedback_labels: Tensor | None = None,
) -> LossParts:
    """-L_RL (clipped PPO policy + value loss - entropy) + mf_coef * L_MF + kl_coef * KL.

    `advantages` are used as given: `update` normalises them over the whole minibatch
    (`norm_adv`) before splitting it into gradient-accumulation micro-batches.
    RLMF addition: `feedback_logits`/`feedback_labels` are D_MF examples (market.feedback.v1
    states and their realised moves); L_MF is then the mean cross-entropy over the rollout
    samples and those together. The RL terms and the KL to the teacher see the rollout only.
    """
    dist = Categorical(logits=logits)
    newlogprob = dist.log_prob(actions)
    entropy = dist.entropy().mean()
    logratio = newlogprob - old_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        # http://joschu.net/blog/kl-approx.html, as in CleanRL
        approx_kl = ((ratio - 1) - logratio).mean()
        clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()

    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2).mean()

    if args.clip_vloss:
        v_loss_unclipped = (newvalue - returns) ** 2
        v_clipped = old_values + torch.clamp(newvalue - old_values, -args.clip_coef, args.clip_coef)
        v_loss = 0.5 * torch.max(v_loss_unclipped, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((newvalue - returns) ** 2).mean()

    # L_MF: the market's realised move is the label; no human in the loop.
    mf_logits, mf_labels = logits, move_labels
    if feedback_logits is not None and feedback_labels is not None:
        mf_logits = torch.cat([logits, feedback_logits])
        mf_labels = torch.cat([move_labels, feedback_labels])
    mf_loss = F.cross_entropy(mf_logits, mf_labels)
    kl_teacher = kl_to_teacher(logits, teacher_logits)

    neg_l_rl = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
    loss = neg_l_rl + args.mf_coef * mf_loss + args.kl_coef * kl_teacher
    return LossParts(loss, pg_loss, v_loss, entropy, mf_loss, kl_teacher, approx_kl, clipfrac)


def annealed_lr(args: PPOArgs, iteration: int) -> float:
    """CleanRL's linear decay over the run's iterations. By iterations only, never by the wall
    clock: the same seed and recipe then anneal alike on any machine (a wall-clock cap that
    ends the run early leaves the rate where that iteration had it)."""
    return (1.0 - (iteration - 1.0) / args.num_iterations) * args.learning_rate


def pad_left(rows: list[Tensor], value: float = 0) -> Tensor:
    """Stack [T_i, ...] tensors into [B, max T, ...], padding on the left as the policy does
    (its position ids skip left padding, so a padded row computes what it does alone)."""
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), width, *rows[0].shape[1:]), value)
    for i, row in enumerate(rows):
        out[i, width - row.shape[0] :] = row
    return out


def realised_return(info: dict[str, Any], before: MarketState, after: MarketState | None) -> float:
    """The close-to-close move of the step just taken (from the env's info when it says)."""
    if "realised_return" in info:
        return float(info["realised_return"])
    if after is None:
        return 0.0
    return after.price / before.price - 1.0


# ---------------------------------------------------------------------------------------------
# D_MF: the market feedback records, ready for the update (RLMF addition)
# ---------------------------------------------------------------------------------------------


@dataclass
class FeedbackSet:
    """RLMF addition: D_MF as the update consumes it. For each market.feedback.v1 record, the
    hidden states entering the trainable top layers (the frozen base run once, as for rollout
    samples), its attention mask, and the label of the move the market made next."""

    hidden: list[Tensor]
    attention_mask: list[Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.hidden)


def encode_feedback(
    agent: ActorCritic, inputs: Sequence[tuple[Tensor, Tensor]], labels: Sequence[int]
) -> FeedbackSet:
    """RLMF addition: run the frozen base once over each D_MF prompt ((input_ids [1, T],
    attention_mask [1, T]) as the policy encodes it); `labels` index ACTIONS."""
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} feedback prompts but {len(labels)} labels")
    hidden, masks = [], []
    with torch.no_grad():
        for ids, mask in inputs:
            hidden.append(agent.base_hidden(ids, mask)[0])
            masks.append(mask[0])
    return FeedbackSet(hidden, masks, torch.tensor(list(labels), dtype=torch.long))


def sample_feedback(
    feedback: FeedbackSet | None, args: PPOArgs, parts: int, gen: torch.Generator
) -> list[Tensor]:
    """RLMF addition: one minibatch's D_MF indices (mf_minibatch_size, without replacement),
    split over its `parts` micro-batches; empty parts when there is nothing to sample."""
    if feedback is None or not len(feedback) or not args.mf_minibatch_size or not args.mf_coef:
        # No D_MF, or no weight on it: draw nothing, so the RNG stream stays the rollout-only one.
        return [torch.empty(0, dtype=torch.long)] * parts
    inds = torch.randperm(len(feedback), generator=gen)[: args.mf_minibatch_size]
    return list(torch.tensor_split(inds, parts))


def feedback_logits(
    agent: ActorCritic, feedback: FeedbackSet | None, inds: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """RLMF addition: the student's action logits and the realised labels of D_MF rows `inds`,
    from their cached hidden states (top layers only, with grad); (None, None) for no rows."""
    if feedback is None or not len(inds):
        return None, None
    rows = inds.tolist()
    mask = pad_left([feedback.attention_mask[i] for i in rows])
    logits, _ = agent.head_forward(pad_left([feedback.hidden[i] for i in rows]), mask)
    return logits, feedback.labels[inds]


def _feedback_tokens(feedback: FeedbackSet | None, inds: Tensor) -> int:
    """Tokens of the D_MF rows `inds` that went through the top layers (for tokens/s)."""
    if feedback is None:
        return 0
    return sum(int(feedback.attention_mask[i].sum()) for i in inds.tolist())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout's buffers (CleanRL's obs/actions/logprobs/... arrays) for num_envs=1."""

    input_ids: list[Tensor] = field(default_factory=list)
    attention_mask: list[Tensor] = field(default_factory=list)
    hidden: list[Tensor] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    dones: list[float] = field(default_factory=list)
    move_labels: list[int] = field(default_factory=list)
    teacher_logits: list[Tensor] = field(default_factory=list)


@dataclass
class PPOResult:
    iterations_done: int
    """number of the last iteration completed (resumed ones included)"""
    global_step: int
    resumed_from: int
    episode_returns: list[float]
    metrics: dict[str, float]
    update_tokens: int
    update_seconds: float
    stopped_by_budget: bool = False
    """the deadline passed before total_timesteps' iterations were done"""
    interrupted: bool = False
    """a stop was requested (the service got SIGTERM): checkpointed, a rerun resumes"""
    elapsed_s: float = 0.0
    """wall-clock seconds of this train() call"""

    @property
    def iterations_run(self) -> int:
        """iterations run by this call (not the resumed ones)"""
        return self.iterations_done - self.resumed_from

    @property
    def update_tokens_per_s(self) -> float:
        return self.update_tokens / self.update_seconds if self.update_seconds else 0.0


# ---------------------------------------------------------------------------------------------
# Progress and the wall-clock budget
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a run stands: what `train` hands its `progress` callback while it trains."""

    iteration: int
    """the iteration running (or just finished), 1-based"""
    num_iterations: int
    """iterations total_timesteps allows: the upper bound when a budget is set"""
    global_step: int
    """environment steps so far, the running rollout's included"""
    total_steps: int
    """steps the run is expected to take: all iterations', or fewer when the budget ends it"""
    mean_episode_return: float
    """mean return of the episodes finished so far (NaN before the first ends)"""
    pg_loss: float
    """last update's mean policy loss (NaN before the first update)"""
    v_loss: float
    entropy: float
    mf_loss: float
    approx_kl: float
    elapsed_s: float
    """wall-clock seconds since train() started"""
    eta_s: float
    """estimated seconds left, from this call's steps per second"""

    @property
    def fraction_done(self) -> float:
        """0..1, for a progress bar (tqdm: total=1.0, n=fraction_done)"""
        return min(1.0, self.global_step / self.total_steps) if self.total_steps else 1.0


def log_progress(p: Progress) -> None:
    """One info line per report: a default `progress` callback for `train`."""
    log.info(
        "ppo iteration %d/%d, step %d/%d (%.0f%%), mean episode return %.4g, "
        "pg %.4g, v %.4g, entropy %.4g, mf %.4g, approx_kl %.4g, %.0f s elapsed, eta %.0f s",
        p.iteration,
        p.num_iterations,
        p.global_step,
        p.total_steps,
        100 * p.fraction_done,
        p.mean_episode_return,
        p.pg_loss,
        p.v_loss,
        p.entropy,
        p.mf_loss,
        p.approx_kl,
        p.elapsed_s,
        p.eta_s,
        extra={"fields": {**asdict(p), "fraction_done": p.fraction_done}},
    )


class _RunClock:
    """One train() call's wall clock: the budget, the step estimates and progress reports."""

    def __init__(
        self,
        args: PPOArgs,
        state: dict[str, Any],
        start_step: int,
        deadline: float | None,
        progress: Callable[[Progress], None] | None,
        every_s: float,
    ) -> None:
        self.args, self.state, self.start_step = args, state, start_step
        self.deadline, self.progress, self.every_s = deadline, progress, every_s
        self.started = self.last_report = time.monotonic()
        self.iteration = 0
        self.metrics: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def estimate(self, global_step: int) -> tuple[int, float]:
        """(total steps the run will take, seconds left) at this call's steps per second."""
        upper = self.args.num_iterations * self.args.batch_size
        steps, elapsed = global_step - self.start_step, self.elapsed()
        if steps <= 0 or elapsed <= 0:
            return upper, math.nan
        rate = steps / elapsed
        total = upper
        if self.deadline is not None:
            # The run stops at the end of the iteration in which the budget runs out.
            reach = global_step + rate * max(0.0, self.deadline - time.monotonic())
            total = min(upper, math.ceil(reach / self.args.batch_size) * self.args.batch_size)
        return total, max(0.0, (total - global_step) / rate)

    def tick(self, global_step: int, steps: int = 0) -> None:
        """Report at `global_step` + `steps` when `every_s` has passed since the last report
        (bound to the iteration's global_step with functools.partial)."""
        if self.progress is not None and time.monotonic() - self.last_report >= self.every_s:
            self.report(global_step + steps)

    def report(self, global_step: int) -> None:
        if self.progress is None:
            return
        total, eta = self.estimate(global_step)
        returns = self.state["episode_returns"]
        m = self.metrics
        self.progress(
            Progress(
                iteration=self.iteration,
                num_iterations=self.args.num_iterations,
                global_step=global_step,
                total_steps=total,
                mean_episode_return=sum(returns) / len(returns) if returns else math.nan,
                pg_loss=m.get("losses/pg_loss", math.nan),
                v_loss=m.get("losses/v_loss", math.nan),
                entropy=m.get("losses/entropy", math.nan),
                mf_loss=m.get("losses/mf_loss", math.nan),
                approx_kl=m.get("losses/approx_kl", math.nan),
                elapsed_s=self.elapsed(),
                eta_s=eta,
            )
        )
        self.last_report = time.monotonic()


def _trainable(agent: ActorCritic) -> list[torch.nn.Parameter]:
    return [p for p in agent.parameters() if p.requires_grad]


def _sample_forward(
    agent: ActorCritic, teacher: ActorCritic, ids: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with torch.no_grad():
        hidden = agent.base_hidden(ids, mask)
        logits, value = agent.head_forward(hidden, mask)
        # The student starts as a copy of the teacher over the same frozen base, so the
        # teacher's hidden states are the student's: only its (frozen) head runs again.
        teacher_logits, _ = teacher.head_forward(hidden, mask)
    return hidden, logits, value, teacher_logits


def collect_rollout(
    agent: ActorCritic,
    teacher: ActorCritic,
    env: StateEnv,
    encode: Encoder,
    args: PPOArgs,
    state: dict[str, Any],
    gen: torch.Generator,
    tick: Callable[[int], None] | None = None,
) -> Rollout:
    """num_steps of acting in `env`; `state` carries the running episode between rollouts.

    `tick(steps taken so far)` is called after every step (progress reports mid-rollout)."""
    buf = Rollout()
    for step in range(1, args.num_steps + 1):
        market = env.current_state()
        ids, mask = encode(market)
        hidden, logits, value, teacher_logits = _sample_forward(agent, teacher, ids, mask)
        dist = Categorical(logits=logits[0])
        action = int(torch.multinomial(dist.probs, 1, generator=gen).item())
        _, reward, terminated, truncated, info = env.step(action)
        state["episode_steps"] += 1
        # The cap is the run's own (args), whatever limit the env was built with.
        truncated = truncated or state["episode_steps"] >= args.max_episode_steps
        done = terminated or truncated
        # The bar after the decision is the env's current one, also at an episode's end.
        after = env.current_state()
        move = realised_return(info, market, after)

        buf.input_ids.append(ids[0])
        buf.attention_mask.append(mask[0])
        buf.hidden.append(hidden[0] if args.reuse_hidden else torch.empty(0))
        buf.actions.append(action)
        buf.logprobs.append(float(dist.log_prob(torch.tensor(action))))
        buf.values.append(float(value[0]))
        if truncated and not terminated:
            # A time limit is not the end of the market: bootstrap the cut-off tail from the
            # critic (as SB3 does), instead of treating the last step as terminal.
            reward = float(reward) + args.gamma * _state_value(agent, encode, after)
        buf.rewards.append(float(reward))
        buf.dones.append(state["next_done"])
        buf.move_labels.append(move_label(move, args.mf_flat_threshold))
        buf.teacher_logits.append(teacher_logits[0])

        state["episode_return"] += float(reward)
        state["next_done"] = 1.0 if done else 0.0
        if done:
            state["episode_returns"].append(state["episode_return"])
            state["episode_return"] = 0.0
            state["episode_steps"] = 0
            state["episodes"] += 1
            env.reset(seed=args.seed + state["episodes"])
        if tick is not None:
            tick(step)
    return buf


def _state_value(agent: ActorCritic, encode: Encoder, market: Any) -> float:
    ids, mask = encode(market)
    with torch.no_grad():
        _, value = agent.head_forward(agent.base_hidden(ids, mask), mask)
    return float(value[0])


def _bootstrap_value(agent: ActorCritic, env: StateEnv, encode: Encoder, next_done: float) -> float:
    if next_done:
        return 0.0
    ids, mask = encode(env.current_state())
    with torch.no_grad():
        _, value = agent.head_forward(agent.base_hidden(ids, mask), mask)
    return float(value[0])


@dataclass
class FeedbackFit:
    """What the market-feedback phase did: steps, and the first and last epochs' mean losses."""

    steps: int = 0
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    stopped_by_budget: bool = False


def fit_market_feedback(
    agent: ActorCritic,
    teacher: ActorCritic,
    feedback: FeedbackSet,
    args: PPOArgs,
    epochs: int,
    deadline: float | None = None,
    learning_rate: float | None = None,
    max_steps: int | None = None,
) -> FeedbackFit:
    """RLMF addition: epochs of mf_coef * L_MF + kl_coef * KL(student || teacher) on D_MF alone,
    before PPO. Inside PPO, L_MF gets one D_MF minibatch per PPO minibatch, a handful of steps
    in a cycle's budget; here it gets as many as the epochs ask (at most `max_steps` optimizer
    steps when given: a budget that does not grow with D_MF), on the frozen base's cached
    hidden states (top layers only), so the market's verdict on the window's states is learnt
    first and PPO refines it. A wall-clock safety cap, `deadline` (a time.monotonic() value),
    stops it between steps (`stopped_by_budget`). `learning_rate` defaults to PPO's."""
    fit = FeedbackFit()
    if not len(feedback) or epochs <= 0 or not args.mf_coef or max_steps == 0:
        return fit
    params = _trainable(agent)
    optimizer = torch.optim.AdamW(params, lr=learning_rate or args.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(args.seed)
    size = max(1, args.mf_minibatch_size)
    planned = epochs * math.ceil(len(feedback) / size)
    planned = planned if max_steps is None else min(planned, max_steps)
    agent.train(True)
    for epoch in range(epochs):
        losses = []
        for inds in torch.randperm(len(feedback), generator=gen).split(size):
            losses.append(_feedback_step(agent, teacher, feedback, inds, args, optimizer))
            fit.steps += 1
            if fit.steps >= planned:
                break
            if deadline is not None and time.monotonic() >= deadline:
                fit.stopped_by_budget = True
                break
        if epoch == 0:
            fit.first_loss = sum(losses) / len(losses)
        fit.last_loss = sum(losses) / len(losses)
        log.info("market feedback epoch %d/%d: loss %.4f", epoch + 1, epochs, fit.last_loss)
        if fit.stopped_by_budget or fit.steps >= planned:
            break
    agent.train(False)
    return fit


def _feedback_step(
    agent: ActorCritic,
    teacher: ActorCritic,
    feedback: FeedbackSet,
    inds: Tensor,
    args: PPOArgs,
    optimizer: torch.optim.Optimizer,
) -> float:
    """One optimizer step of the market-feedback phase on D_MF rows `inds`; its loss."""
    logits, labels = feedback_logits(agent, feedback, inds)
    assert logits is not None and labels is not None
    with torch.no_grad():
        rows = inds.tolist()
        mask = pad_left([feedback.attention_mask[i] for i in rows])
        teacher_logits, _ = teacher.head_forward(pad_left([feedback.hidden[i] for i in rows]), mask)
    kl = kl_to_teacher(logits, teacher_logits)
    loss = args.mf_coef * F.cross_entropy(logits, labels) + args.kl_coef * kl
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(_trainable(agent), args.max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def update(
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buf: Rollout,
    advantages: Tensor,
    returns: Tensor,
    args: PPOArgs,
    gen: torch.Generator,
    feedback: FeedbackSet | None = None,
    tick: Callable[[], None] | None = None,
) -> tuple[dict[str, float], int]:
    """update_epochs over the rollout, one optimizer step per minibatch -> (metrics, tokens).

    Advantages are normalised over each whole minibatch (`norm_adv`), then the minibatch is
    split into micro-batches, so the gradient does not depend on gradient_accumulation_steps.
    `tick` is called after every optimizer step (progress reports during a long update).
    RLMF addition: with `feedback` (D_MF), each minibatch also samples D_MF examples into L_MF.
    """
    b_actions = torch.tensor(buf.actions)
    b_logprobs = torch.tensor(buf.logprobs)
    b_values = torch.tensor(buf.values)
    b_labels = torch.tensor(buf.move_labels)
    b_teacher = torch.stack(buf.teacher_logits)
    params = _trainable(agent)
    tokens = 0
    sums: dict[str, float] = {}
    count = 0
    agent.train()
    for _epoch in range(args.update_epochs):
        b_inds = torch.randperm(args.batch_size, generator=gen)
        approx_kls = []
        for start in range(0, args.batch_size, args.minibatch_size):
            mb_inds = b_inds[start : start + args.minibatch_size]
            mb_advantages = advantages[mb_inds]
            if args.norm_adv:
                mb_advantages = normalise_advantages(mb_advantages)
            optimizer.zero_grad(set_to_none=True)
            starts = range(0, len(mb_inds), args.micro_batch_size)
            feedback_parts = sample_feedback(feedback, args, len(starts), gen)
            for lo, f_inds in zip(starts, feedback_parts, strict=True):
                u_inds = mb_inds[lo : lo + args.micro_batch_size]
                rows = u_inds.tolist()
                mask = pad_left([buf.attention_mask[i] for i in rows])
                if args.reuse_hidden:
                    hidden = pad_left([buf.hidden[i] for i in rows])
                else:  # no reuse: run the frozen base again for every micro-batch
                    with torch.no_grad():
                        hidden = agent.base_hidden(pad_left([buf.input_ids[i] for i in rows]), mask)
                logits, newvalue = agent.head_forward(hidden, mask)
                f_logits, f_labels = feedback_logits(agent, feedback, f_inds)
                parts = rlmf_loss(
                    logits,
                    newvalue,
                    actions=b_actions[u_inds],
                    old_logprobs=b_logprobs[u_inds],
                    advantages=mb_advantages[lo : lo + args.micro_batch_size],
                    returns=returns[u_inds],
                    old_values=b_values[u_inds],
                    move_labels=b_labels[u_inds],
                    teacher_logits=b_teacher[u_inds],
                    args=args,
                    feedback_logits=f_logits,
                    feedback_labels=f_labels,
                )
                # Scale so accumulated micro-batch gradients equal the minibatch mean's (D_MF
                # rows ride along in their micro-batch's L_MF mean, not in this weight).
                (parts.loss * len(u_inds) / len(mb_inds)).backward()
                tokens += int(mask.sum()) + _feedback_tokens(feedback, f_inds)
                approx_kls.append(float(parts.approx_kl))
                for name in (
                    "loss",
                    "pg_loss",
                    "v_loss",
                    "entropy",
                    "mf_loss",
                    "kl_teacher",
                    "approx_kl",
                    "clipfrac",
                ):
                    sums[name] = sums.get(name, 0.0) + float(getattr(parts, name).detach())
                count += 1
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            if tick is not None:
                tick()
        if args.target_kl is not None and sum(approx_kls) / len(approx_kls) > args.target_kl:
            break
    metrics = {f"losses/{k}": v / max(count, 1) for k, v in sums.items()}
    return metrics, tokens


def train(
    agent: ActorCritic,
    teacher: ActorCritic,
    env: StateEnv,
    encode: Encoder,
    args: PPOArgs,
    checkpoint_dir: Path | None = None,
    stop_after_iterations: int | None = None,
    feedback: FeedbackSet | None = None,
    *,
    deadline: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
    stop_requested: Callable[[], bool] | None = None,
) -> PPOResult:
    """Run PPO+RLMF; resumes from the newest checkpoint in `checkpoint_dir` when there is one.

    `stop_requested` is asked after every iteration; when it says yes the run checkpoints and
    returns with `interrupted` set (a service stopping on SIGTERM), and a rerun resumes.

    `deadline` (a `time.monotonic()` value) is a wall-clock safety cap: the run stops after the
    iteration in which it passes (never mid-update, checkpointed so a rerun resumes) and says so
    in `stopped_by_budget`; total_timesteps is the budget. The learning rate anneals by
    iterations alone, so a cap that does not bind changes nothing. The cap counts this call
    only: a resumed run gets its own.
    `progress` receives a `Progress` after every iteration and whenever `progress_every_s`
    passed since the last one, mid-rollout and mid-update too (`log_progress` logs it).
    RLMF addition: `feedback` is D_MF (`encode_feedback`), sampled into every minibatch's L_MF.
    """
    args.derive()
    if args.norm_adv and args.minibatch_size == 1:
        log.warning("norm_adv has no effect with minibatch_size 1: advantages are used as is")
    torch.manual_seed(args.seed)
    params = _trainable(agent)
    dtype = getattr(torch, args.train_dtype)
    for p in params:
        p.data = p.data.to(dtype)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, eps=1e-5)
    gen = torch.Generator().manual_seed(args.seed)
    state: dict[str, Any] = {
        "next_done": 0.0,
        "episode_return": 0.0,
        "episode_steps": 0,
        "episodes": 0,
        "episode_returns": [],
    }
    start_iteration = 1
    global_step = 0
    saved = checkpoint.load_latest(checkpoint_dir) if checkpoint_dir else None
    if saved is not None:
        start_iteration, global_step = _restore(saved, agent, optimizer, gen, state)
        log.info("resuming PPO at iteration %d (global step %d)", start_iteration, global_step)
    resumed_from = start_iteration - 1
    # A resumed run starts a fresh episode: the env's position is not part of the checkpoint.
    env.reset(seed=args.seed + state["episodes"])
    state["next_done"] = 0.0
    state["episode_steps"] = 0
    clock = _RunClock(args, state, global_step, deadline, progress, progress_every_s)

    metrics: dict[str, float] = {}
    update_tokens, update_seconds = 0, 0.0
    done, stopped_by_budget, interrupted = resumed_from, False, False
    last = args.num_iterations
    if stop_after_iterations is not None:
        last = min(last, start_iteration - 1 + stop_after_iterations)
    for iteration in range(start_iteration, last + 1):
        clock.iteration = iteration
        if args.anneal_lr:
            lr = annealed_lr(args, iteration)
            optimizer.param_groups[0]["lr"] = lr

        agent.train(False)
        buf = collect_rollout(
            agent, teacher, env, encode, args, state, gen, partial(clock.tick, global_step)
        )
        global_step += args.batch_size
        next_value = _bootstrap_value(agent, env, encode, state["next_done"])
        advantages, returns = compute_gae(
            torch.tensor(buf.rewards),
            torch.tensor(buf.values),
            torch.tensor(buf.dones),
            torch.tensor(next_value),
            torch.tensor(state["next_done"]),
            args.gamma,
            args.gae_lambda,
        )

        started = time.perf_counter()
        metrics, tokens = update(
            agent,
            optimizer,
            buf,
            advantages,
            returns,
            args,
            gen,
            feedback,
            partial(clock.tick, global_step),
        )
        update_seconds += time.perf_counter() - started
        update_tokens += tokens
        metrics["charts/learning_rate"] = optimizer.param_groups[0]["lr"]
        metrics["charts/mean_reward"] = sum(buf.rewards) / len(buf.rewards)
        _check_finite(metrics, iteration)
        log.info("ppo iteration %d/%d", iteration, args.num_iterations, extra={"fields": metrics})
        done = iteration
        # Checked once the update is over: a budget never cuts an iteration short.
        stopped_by_budget = iteration < last and clock.out_of_time()
        interrupted = iteration < last and stop_requested is not None and stop_requested()

        if checkpoint_dir and (
            iteration % args.checkpoint_every == 0
            or iteration == last
            or stopped_by_budget
            or interrupted
        ):
            checkpoint.save(
                checkpoint_dir,
                iteration,
                _snapshot(iteration, global_step, agent, optimizer, gen, state),
            )
        clock.metrics = metrics
        clock.report(global_step)
        if stopped_by_budget:
            log.info("PPO wall-clock cap reached after iteration %d of %d", iteration, last)
            break
        if interrupted:
            log.info("PPO stopped on request after iteration %d, checkpointed", iteration)
            break
    return PPOResult(
        iterations_done=done,
        global_step=global_step,
        resumed_from=resumed_from,
        episode_returns=list(state["episode_returns"]),
        metrics=metrics,
        update_tokens=update_tokens,
        update_seconds=update_seconds,
        stopped_by_budget=stopped_by_budget,
        interrupted=interrupted,
        elapsed_s=clock.elapsed(),
    )


def _check_finite(metrics: dict[str, float], iteration: int) -> None:
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"PPO iteration {iteration}: non-finite {', '.join(bad)}")


def _trainable_state(agent: ActorCritic) -> dict[str, Tensor]:
    named = agent.named_parameters()  # type: ignore[attr-defined]
    return {name: p.detach().clone() for name, p in named if p.requires_grad}


def _snapshot(
    iteration: int,
    global_step: int,
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    state: dict[str, Any],
) -> dict[str, Any]:
    return {
        "iteration": iteration,
        "global_step": global_step,
        "trainable": _trainable_state(agent),
        "optimizer": optimizer.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "episode_state": {k: v for k, v in state.items()},
    }


def _restore(
    saved: dict[str, Any],
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
    state: dict[str, Any],
) -> tuple[int, int]:
    named = dict(agent.named_parameters())  # type: ignore[attr-defined]
    with torch.no_grad():
        for name, value in saved["trainable"].items():
            named[name].copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    state.update(saved["episode_state"])
    return int(saved["iteration"]) + 1, int(saved["global_step"])


def args_dict(args: PPOArgs) -> dict[str, Any]:
    return asdict(args)
