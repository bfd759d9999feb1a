"""The day cache on a tiny random Llama: cached logits equal the uncached forward, a day is
computed once whatever the portfolio, the store is bounded, reads back from disk, and refuses
a key or a file from another base."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from services.common.market_state import MarketState
from services.policy.actor_critic import ActorCriticConfig, LLMActorCritic
from services.policy.day_cache import DayCache, DayCacheError, DayEntry, DayKey
from services.policy.prompt import build_prompt


def _state(day: int, position: float = 0.0, cash: float = 1000.0) -> MarketState:
    return MarketState(
        ticker="MSFT",
        as_of=datetime(2024, 1, 2 + day, 21, tzinfo=UTC),
        recent_closes=[100.0 + j for j in range(1 + 2 * day)],
        position=position,
        cash=cash,
        features={"rsi_14": 40.0 + day},
        news_summary="Results beat. " * day,
        sentiment=0.1 * day,
    )


@pytest.fixture
def model(tiny_llama_dir: Path) -> LLMActorCritic:
    return LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=2))


def _states() -> list[MarketState]:
    # Three days, and on day 1 three portfolios: 0%, about 50% and 100% invested.
    return [
        _state(0),
        _state(1),
        _state(1, position=5.0, cash=500.0),
        _state(1, position=10.0, cash=0.0),
        _state(2),
    ]


def test_day_cache_logits_equal_the_uncached_forward(model: LLMActorCritic) -> None:
    states = _states()
    ids, mask = model.encode(states)
    with torch.no_grad():
        plain_logits, plain_values = model(ids, mask)
        model.attach_day_cache()
        cached_logits, cached_values = model.head_forward(model.base_hidden(ids, mask), mask)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached_values, plain_values, atol=1e-4, rtol=1e-4)
    # decide() takes the same path once a cache is attached
    probs = [d.probabilities["buy"] for d in model.decide(states)]
    expected = torch.softmax(plain_logits, -1)[:, 2].tolist()
    assert probs == pytest.approx(expected, abs=1e-4)


def test_a_day_is_computed_once_whatever_the_portfolio(model: LLMActorCritic) -> None:
    cache = model.attach_day_cache()
    model.base_hidden(*model.encode(_states()))
    assert len(cache) == 3  # three distinct days
    assert cache.stats.misses == 3 and cache.stats.hits == 2
    model.base_hidden(*model.encode(_states()))
    assert cache.stats.misses == 3 and cache.stats.hits == 7


def test_the_portfolio_is_the_prompts_last_part(model: LLMActorCritic) -> None:
    empty, half = build_prompt(_state(1)), build_prompt(_state(1, position=5.0, cash=500.0))
    assert empty.day == half.day and empty.tail != half.tail
    assert "invested_pct: 0\n" in empty.tail and "invested_pct: 50\n" in half.tail
    assert "2024-01-03" in empty.day and "invested_pct" not in empty.day


def test_entries_read_back_from_disk_by_another_process_view(
    model: LLMActorCritic, tmp_path: Path
) -> None:
    writer = model.attach_day_cache(folder=tmp_path)
    ids, mask = model.encode(_states())
    first = model.base_hidden(ids, mask)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 3 and all(f.name.startswith(writer.base_sha[:16]) for f in files)
    reader = model.attach_day_cache(folder=tmp_path)  # a fresh, empty memory
    again = model.base_hidden(ids, mask)
    assert reader.stats.disk_hits == 3 and reader.stats.misses == 0
    torch.testing.assert_close(again, first)


def test_the_cache_refuses_a_key_from_another_base(model: LLMActorCritic, tmp_path: Path) -> None:
    cache = model.attach_day_cache(folder=tmp_path)
    with pytest.raises(DayCacheError, match="another|base"):
        cache.get(DayKey("0" * 64, "1" * 64))
    foreign = DayCache("f" * 64)
    with pytest.raises(Exception, match="base"):
        model.attach_day_cache(cache=foreign)
    # a file renamed under this base's key but written for another is refused on read
    other = DayCache("e" * 64, folder=tmp_path / "other")
    key = other.key([1, 2, 3])
    other.put(key, DayEntry(torch.zeros(3, 4)))
    mine = cache.key([1, 2, 3])
    (tmp_path / "other" / key.file_name).rename(tmp_path / mine.file_name)
    with pytest.raises(DayCacheError, match="another key"):
        cache.get(mine)


def test_another_split_is_another_base(tiny_llama_dir: Path, model: LLMActorCritic) -> None:
    deeper = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=1))
    assert deeper.base_sha != model.base_sha
    same = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=2))
    assert same.base_sha == model.base_sha


def test_memory_is_bounded_by_its_cap() -> None:
    cache = DayCache("a" * 64, memory_cap_bytes=3 * 4 * 100)
    for day in range(10):
        cache.put(cache.key([day]), DayEntry(torch.zeros(100)))
    assert len(cache) == 3 and cache.memory_bytes <= 3 * 4 * 100
    assert cache.get(cache.key([0])) is None and cache.get(cache.key([9])) is not None


def test_an_artifact_built_on_the_old_prompt_is_refused(
    model: LLMActorCritic, tmp_path: Path
) -> None:
    import json

    from services.policy.artifacts import ArtifactError, load_artifact, save_artifact
    from services.policy.prompt import PROMPT_VERSION

    folder = tmp_path / "v-old"
    manifest = save_artifact(model, folder, {"version": "v-old", "base_model": "tiny"})
    assert manifest.prompt_version == PROMPT_VERSION
    assert load_artifact(folder).model_version == "v-old"
    path = folder / "manifest.json"
    fields = json.loads(path.read_text())
    fields.pop("prompt_version")  # as every manifest written before the field existed
    path.write_text(json.dumps(fields))
    with pytest.raises(ArtifactError, match="prompt version 1"):
        load_artifact(folder)


def test_a_shared_cache_is_the_same_one_even_while_empty(
    tiny_llama_dir: Path, model: LLMActorCritic, tmp_path: Path
) -> None:
    teacher_cache = model.attach_day_cache(folder=tmp_path)
    assert len(teacher_cache) == 0
    student = LLMActorCritic.from_pretrained(tiny_llama_dir, ActorCriticConfig(trainable_top_k=2))
    assert student.attach_day_cache(cache=teacher_cache) is teacher_cache
    student.base_hidden(*student.encode(_states()[:1]))
    assert len(teacher_cache) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1


def test_the_state_head_is_the_same_on_every_path_and_travels_with_the_artifact(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from services.policy.artifacts import load_artifact, save_artifact

    config = ActorCriticConfig(trainable_top_k=1, state_head=True, train_lm_layers=False)
    model = LLMActorCritic.from_pretrained(tiny_llama_dir, config)
    trainable = model.trainable_parameters()
    assert model.state_head is not None and len(trainable) == 4 + 2  # value MLP + state head
    model.state_head.standardise(torch.randn(5, model.lm.config.hidden_size) * 3 + 1)
    with torch.no_grad():
        model.state_head.linear.weight.normal_()  # a trained head: it shows on every path
    states = _states()
    ids, mask = model.encode(states)
    with torch.no_grad():
        full, _ = model(ids, mask)
        split, _ = model.head_forward(model.base_hidden(ids, mask), mask)
        prefixed, _ = model.cached_forward(*model.encode_suffixes(states))
        model.attach_day_cache()
        day, _ = model.head_forward(model.base_hidden(ids, mask), mask)
    for other in (split, prefixed, day):
        torch.testing.assert_close(other, full, atol=1e-4, rtol=1e-4)
    save_artifact(model, tmp_path / "v1", {"version": "v1", "base_model": "tiny"})
    loaded = load_artifact(tmp_path / "v1")
    assert loaded.state_head is not None
    torch.testing.assert_close(loaded.state_head.linear.weight, model.state_head.linear.weight)
    torch.testing.assert_close(loaded.state_head.scale, model.state_head.scale)
