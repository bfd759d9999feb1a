"""PPO + RLMF math: GAE against a hand computation, the RLMF loss's gradient, and learning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from services.common.market_state import MarketState
from services.trainer import ppo
from services.trainer.ppo import (
    BUY,
    HOLD,
    SELL,
    PPOArgs,
    compute_gae,
    move_label,
    normalise_advantages,
    pad_left,
    rlmf_loss,
)
from tests.tiny_ppo import TinyActorCritic, UptrendEnv, _agents, _buy_probability, _encode

# Tiny models: extra intra-op threads only contend on the shared 2-core machine.
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_gae_matches_hand_computation() -> None:
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([1.0, 0.0, 2.0])
    values = torch.tensor([0.5, 1.0, 1.5])
    dones = torch.tensor([0.0, 0.0, 1.0])  # step 2's observation starts a new episode
    next_value, next_done = torch.tensor(3.0), torch.tensor(0.0)
    adv, ret = compute_gae(rewards, values, dones, next_value, next_done, gamma, lam)
    # by hand, backwards:
    d2 = 2.0 + 0.9 * 3.0 - 1.5  # 3.2, bootstrapped from next_value
    a2 = d2
    d1 = 0.0 + 0.9 * 1.5 * 0.0 - 1.0  # step 2 begins a new episode: no bootstrap across it
    a1 = d1 + 0.9 * 0.5 * 0.0 * a2
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a0 = d0 + 0.9 * 0.5 * a1
    assert adv.tolist() == pytest.approx([a0, a1, a2])
    assert ret.tolist() == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5])


def test_move_label_follows_the_sign_of_the_realised_move() -> None:
    assert move_label(0.01) == BUY
    assert move_label(-0.01) == SELL
    assert move_label(0.0) == HOLD
    assert move_label(0.001, flat_threshold=0.005) == HOLD


def _loss_inputs(logits: Tensor, labels: list[int]) -> dict[str, Any]:
    n = logits.shape[0]
    return dict(
        actions=torch.zeros(n, dtype=torch.long),
        old_logprobs=torch.log_softmax(logits.detach(), -1)[:, 0],
        advantages=torch.zeros(n),
        returns=torch.zeros(n),
        old_values=torch.zeros(n),
        move_labels=torch.tensor(labels),
        teacher_logits=logits.detach().clone(),
    )


def test_rlmf_loss_gradient_is_the_market_feedback_cross_entropy_gradient() -> None:
    # With zero advantages/values, no entropy or KL weight, the gradient w.r.t. the logits is
    # mf_coef * (softmax - onehot(label)) / n: the closed form of cross-entropy's gradient.
    logits = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0]], requires_grad=True)
    args = PPOArgs(ent_coef=0.0, kl_coef=0.0, mf_coef=0.7, vf_coef=0.0, norm_adv=False)
    parts = rlmf_loss(
        logits, torch.zeros(2, requires_grad=True), args=args, **_loss_inputs(logits, [BUY, SELL])
    )
    parts.loss.backward()
    onehot = torch.nn.functional.one_hot(torch.tensor([BUY, SELL]), 3).float()
    expected = 0.7 * (torch.softmax(logits.detach(), -1) - onehot) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_rlmf_loss_combines_rl_feedback_and_kl_terms() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    values = torch.randn(4, requires_grad=True)
    inputs = _loss_inputs(logits, [BUY, BUY, SELL, HOLD])
    inputs["advantages"] = torch.tensor([1.0, -1.0, 0.5, 2.0])
    inputs["returns"] = torch.tensor([1.0, 0.0, 0.5, 0.2])
    inputs["teacher_logits"] = torch.randn(4, 3)
    args = PPOArgs(mf_coef=0.3)
    parts = rlmf_loss(logits, values, args=args, **inputs)
    expected = (
        parts.pg_loss
        - args.ent_coef * parts.entropy
        + args.vf_coef * parts.v_loss
        + 0.3 * parts.mf_loss
        + args.kl_coef * parts.kl_teacher
    )
    assert torch.isclose(parts.loss, expected)
    assert parts.kl_teacher > 0  # a different teacher costs something
    parts.loss.backward()
    assert logits.grad is not None and values.grad is not None
    assert torch.isfinite(logits.grad).all()


# ---- a tiny actor-critic and a steady uptrend: PPO must learn `buy` ----------------------


@pytest.mark.parametrize("mf_coef", [0.0, 1.0])
def test_ppo_learns_to_buy_a_steady_uptrend(mf_coef: float) -> None:
    agent, teacher = _agents(0)
    before = _buy_probability(agent)
    args = PPOArgs(
        total_timesteps=800,
        learning_rate=3e-2,
        num_steps=40,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        update_epochs=4,
        kl_coef=0.0,
        mf_coef=mf_coef,
        seed=3,
    )
    result = ppo.train(agent, teacher, UptrendEnv(), _encode, args)
    after = _buy_probability(agent)
    assert before < 0.5 and after > 0.9, (before, after)
    # episodes at the end earn clearly more than the random start's (max 20 per episode)
    assert sum(result.episode_returns[-5:]) / 5 > 15


def test_reuse_runs_the_frozen_base_once_per_sample() -> None:
    args = PPOArgs(
        total_timesteps=40,
        num_steps=40,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        update_epochs=3,
        kl_coef=0.0,
    )
    for reuse, extra in ((True, 0), (False, 3 * 40 // 4)):
        agent, teacher = _agents(0)
        args.reuse_hidden = reuse
        ppo.train(agent, teacher, UptrendEnv(), _encode, args)
        # 40 rollout samples, plus one critic pass where the time limit cut an episode (its
        # tail is bootstrapped); without reuse, one more base pass per micro-batch of every epoch
        truncations = 40 // UptrendEnv().max_steps
        assert agent.base_calls == 40 + truncations + extra


def test_killed_run_resumes_from_its_checkpoint(tmp_path) -> None:
    args = PPOArgs(
        total_timesteps=160,
        num_steps=40,
        minibatch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        seed=5,
    )
    # uninterrupted reference
    ref, ref_teacher = _agents(1)
    ppo.train(ref, ref_teacher, UptrendEnv(), _encode, PPOArgs(**_init_fields(args)))
    # "killed" after 2 of 4 iterations, then resumed
    agent, teacher = _agents(1)
    first = ppo.train(
        agent,
        teacher,
        UptrendEnv(),
        _encode,
        PPOArgs(**_init_fields(args)),
        checkpoint_dir=tmp_path,
        stop_after_iterations=2,
    )
    assert first.iterations_done == 2
    fresh, fresh_teacher = _agents(1)  # a new process: weights start from the teacher again
    resumed = ppo.train(
        fresh,
        fresh_teacher,
        UptrendEnv(),
        _encode,
        PPOArgs(**_init_fields(args)),
        checkpoint_dir=tmp_path,
    )
    assert resumed.resumed_from == 2 and resumed.iterations_done == 4
    assert resumed.global_step == 160
    # episodes are 20 steps, so iteration boundaries coincide with episode starts: same result
    for a, b in zip(ref.parameters(), fresh.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def _init_fields(args: PPOArgs) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}


def test_defaults_are_flag_trader_table_3() -> None:
    args = PPOArgs().derive()
    assert (
        args.total_timesteps,
        args.learning_rate,
        args.num_steps,
        args.gamma,
        args.gae_lambda,
    ) == (13860, 5e-5, 40, 0.95, 0.98)
    assert (args.clip_coef, args.ent_coef, args.vf_coef, args.kl_coef, args.max_grad_norm) == (
        0.2,
        0.05,
        0.5,
        0.05,
        0.5,
    )
    assert (args.gradient_accumulation_steps, args.minibatch_size, args.max_episode_steps) == (
        8,
        32,
        65,
    )
    assert args.target_kl is None and args.anneal_lr and args.norm_adv and args.clip_vloss
    assert args.num_iterations == 13860 // 40 and args.micro_batch_size == 4


# ---- advantage normalisation: over the whole minibatch, as CleanRL ------------------------


def test_normalise_advantages_matches_hand_computation() -> None:
    adv = torch.tensor([1.0, 2.0, 3.0, 6.0])
    # mean 3, deviations -2 -1 0 3, unbiased variance (4 + 1 + 0 + 9) / 3
    std = (14 / 3) ** 0.5
    expected = [-2 / std, -1 / std, 0.0, 3 / std]
    assert normalise_advantages(adv).tolist() == pytest.approx(expected, rel=1e-6)
    # one sample has no spread: left as is (centring would zero its policy gradient)
    assert normalise_advantages(torch.tensor([2.5])).tolist() == [2.5]


def _varied_encode(state: MarketState) -> tuple[Tensor, Tensor]:
    ids = torch.tensor([[1, 2, 3, 4 + state.as_of.day % 12]])  # a different prompt per day
    return ids, torch.ones_like(ids)


def _one_update(
    gradient_accumulation_steps: int, advantages: Tensor, norm_adv: bool = True
) -> list[Tensor]:
    """Parameters after one SGD(lr=1) step on an 8-sample minibatch: the step is -gradient."""
    args = PPOArgs(
        total_timesteps=8,
        num_steps=8,
        minibatch_size=8,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_grad_norm=1e9,  # no clipping: the step is the raw gradient
        norm_adv=norm_adv,
        seed=2,
    ).derive()
    agent, teacher = _agents(0)
    state = {"next_done": 0.0, "episode_return": 0.0, "episode_steps": 0, "episodes": 0}
    state["episode_returns"] = []
    gen = torch.Generator().manual_seed(0)
    buf = ppo.collect_rollout(agent, teacher, UptrendEnv(), _varied_encode, args, state, gen)
    optimizer = torch.optim.SGD(ppo._trainable(agent), lr=1.0)
    ppo.update(agent, optimizer, buf, advantages, torch.zeros(8), args, gen)
    return [p.detach().clone() for p in agent.parameters()]


def test_update_normalises_advantages_over_the_minibatch_not_the_micro_batch() -> None:
    advantages = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.0, 1.0, 0.0, 4.0])
    whole = _one_update(1, advantages)  # one micro-batch of 8
    for steps in (2, 8):  # micro-batches of 4 and of 1 sample
        for a, b in zip(whole, _one_update(steps, advantages), strict=True):
            assert torch.allclose(a, b, atol=1e-6), steps
    # and the step is the one of the minibatch normalised by hand, fed in as is
    hand = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    for a, b in zip(whole, _one_update(1, hand, norm_adv=False), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # normalisation matters here: the raw advantages give another step
    raw = _one_update(1, advantages, norm_adv=False)
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(whole, raw, strict=True))


# ---- RLMF addition: D_MF (market.feedback.v1 examples) in L_MF -----------------------------


def test_feedback_rows_join_the_market_feedback_mean() -> None:
    # L_MF is the mean cross-entropy over rollout and D_MF rows together: with every other term
    # off, each row's logit gradient is mf_coef * (softmax - onehot) / (rollout + D_MF rows).
    logits = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.0, -1.0]], requires_grad=True)
    fb_logits = torch.tensor([[0.0, 0.5, -0.5], [0.3, 0.3, 0.1], [-1.0, 2.0, 0.0]])
    fb_logits.requires_grad_(True)
    fb_labels = torch.tensor([BUY, BUY, SELL])
    args = PPOArgs(ent_coef=0.0, kl_coef=0.0, mf_coef=0.7, vf_coef=0.0, norm_adv=False)
    parts = rlmf_loss(
        logits,
        torch.zeros(2, requires_grad=True),
        args=args,
        feedback_logits=fb_logits,
        feedback_labels=fb_labels,
        **_loss_inputs(logits, [BUY, SELL]),
    )
    all_labels = torch.tensor([BUY, SELL, BUY, BUY, SELL])
    all_logits = torch.cat([logits, fb_logits]).detach()
    assert torch.isclose(parts.mf_loss, torch.nn.functional.cross_entropy(all_logits, all_labels))
    parts.loss.backward()
    expected = (
        0.7 * (torch.softmax(all_logits, -1) - torch.nn.functional.one_hot(all_labels, 3)) / 5
    )
    assert torch.allclose(logits.grad, expected[:2], atol=1e-6)
    assert torch.allclose(fb_logits.grad, expected[2:], atol=1e-6)


def _feedback(n: int) -> ppo.FeedbackSet:
    agent, _ = _agents(0)
    ids = [torch.tensor([[5 + i % 4, 9, 10]]) for i in range(n)]
    return ppo.encode_feedback(agent, [(x, torch.ones_like(x)) for x in ids], [SELL] * n)


def test_sample_feedback_splits_one_draw_over_the_micro_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    parts = ppo.sample_feedback(_feedback(10), PPOArgs(mf_minibatch_size=6), 4, gen)
    drawn = torch.cat(parts).tolist()
    assert len(parts) == 4 and [len(p) for p in parts] == [2, 2, 1, 1]
    assert len(set(drawn)) == 6 and all(0 <= i < 10 for i in drawn)
    # fewer examples than mf_minibatch_size: all of them, once
    every = torch.cat(ppo.sample_feedback(_feedback(3), PPOArgs(), 8, gen))
    assert sorted(every.tolist()) == [0, 1, 2]


@pytest.mark.parametrize(
    ("feedback", "args"),
    [(None, PPOArgs()), ("set", PPOArgs(mf_coef=0.0)), ("set", PPOArgs(mf_minibatch_size=0))],
)
def test_sample_feedback_draws_nothing_without_weight_or_examples(
    feedback: str | None, args: PPOArgs
) -> None:
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    parts = ppo.sample_feedback(_feedback(4) if feedback else None, args, 3, gen)
    assert [len(p) for p in parts] == [0, 0, 0]
    assert torch.equal(gen.get_state(), before)  # the rollout-only RNG stream is untouched


def test_feedback_teaches_the_realised_move_on_states_the_rollout_never_sees() -> None:
    def args() -> PPOArgs:  # fresh each run: train() derives fields in place
        return PPOArgs(
            total_timesteps=160,
            learning_rate=3e-2,
            minibatch_size=8,
            gradient_accumulation_steps=2,
            update_epochs=2,
            kl_coef=0.0,
            mf_minibatch_size=4,
            seed=3,
        )

    feedback = _feedback(8)  # token ids 5..10: never in UptrendEnv's prompts; every move fell

    def sell_probability(agent: TinyActorCritic) -> float:
        hidden, mask = pad_left(feedback.hidden), pad_left(feedback.attention_mask)
        with torch.no_grad():
            logits, _ = agent.head_forward(hidden, mask)
        return float(torch.softmax(logits, -1)[:, SELL].mean())

    without, teacher = _agents(0)
    ppo.train(without, teacher, UptrendEnv(), _encode, args())
    with_feedback, teacher = _agents(0)
    ppo.train(with_feedback, teacher, UptrendEnv(), _encode, args(), feedback=feedback)
    # measured: 0.71 with D_MF, 0.09 without (the uptrend's buy spreads to every state)
    assert sell_probability(with_feedback) > 0.5 > sell_probability(without), (
        sell_probability(with_feedback),
        sell_probability(without),
    )


def test_the_market_feedback_phase_learns_the_labels_and_the_kl_holds_it_back() -> None:
    feedback = _feedback(8)  # every move fell: the label is sell

    def sell_probability(agent: TinyActorCritic) -> float:
        hidden, mask = pad_left(feedback.hidden), pad_left(feedback.attention_mask)
        with torch.no_grad():
            logits, _ = agent.head_forward(hidden, mask)
        return float(torch.softmax(logits, -1)[:, SELL].mean())

    def fit(kl_coef: float) -> tuple[float, ppo.FeedbackFit]:
        agent, teacher = _agents(0)
        args = PPOArgs(learning_rate=3e-2, mf_minibatch_size=4, kl_coef=kl_coef, seed=1)
        result = ppo.fit_market_feedback(agent, teacher, feedback, args, epochs=20)
        return sell_probability(agent), result

    before = sell_probability(_agents(0)[0])
    free, result = fit(kl_coef=0.0)
    held, _ = fit(kl_coef=50.0)
    assert result.steps == 40 and result.last_loss < result.first_loss
    assert free > 0.9 > before
    assert before < held < free  # the KL to the teacher keeps the student nearer to it
    budget = ppo.fit_market_feedback(*_agents(0), feedback, PPOArgs(), epochs=20, deadline=0.0)
    assert budget.steps == 1 and budget.stopped_by_budget


def test_the_market_feedback_phase_stops_at_its_step_budget_mid_epoch() -> None:
    """max_steps: a budget in steps that stays put as D_MF grows; the last epoch is partial,
    and a step budget is no wall-clock cut."""
    feedback = _feedback(8)
    args = PPOArgs(mf_minibatch_size=4, seed=1)  # two steps an epoch
    capped = ppo.fit_market_feedback(*_agents(0), feedback, args, epochs=20, max_steps=5)
    assert capped.steps == 5 and not capped.stopped_by_budget
    assert ppo.fit_market_feedback(*_agents(0), feedback, args, epochs=2, max_steps=50).steps == 4
    assert ppo.fit_market_feedback(*_agents(0), feedback, args, epochs=2, max_steps=0).steps == 0
    # a spent wall-clock cap cuts the steps still planned, and nothing once none is left
    done = ppo.fit_market_feedback(*_agents(0), feedback, args, epochs=1, deadline=0.0)
    assert done.steps == 1 and done.stopped_by_budget  # 2 planned: the second is cut
    whole = PPOArgs(mf_minibatch_size=8, seed=1)  # one step an epoch
    last = ppo.fit_market_feedback(*_agents(0), feedback, whole, epochs=1, deadline=0.0)
    assert last.steps == 1 and not last.stopped_by_budget
