"""The rule that picks a news text's reading from its whole and its pieces (agreement.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sentiment.agreement import Reading, choose

SCORES = st.floats(min_value=-1, max_value=1, allow_nan=False)


def _value(whole: float, pieces: list[float], reading: Reading) -> float:
    return whole if reading.piece is None else pieces[reading.piece]


def test_a_text_without_pieces_is_read_whole() -> None:
    assert choose(0.7, []) == Reading(None, False)


@pytest.mark.parametrize(
    ("whole", "pieces", "expected"),
    [
        (0.5, [0.2, 0.8], Reading(None, False)),  # inside the pieces' range: the whole stands
        (0.9, [0.2, 0.8], Reading(1, False)),  # past every piece: bounded by the highest
        (-0.9, [-0.2, -0.8], Reading(1, False)),
        (0.0, [-0.2, -0.8], Reading(0, False)),  # the context can not pull it past the pieces
        (0.8, [-0.08, 0.81], Reading(0, True)),  # contested: the least extreme piece
        (-0.8, [0.4, -0.02, -0.9], Reading(1, True)),
        (0.6, [0.3], Reading(0, False)),  # one long piece and short ones: that piece bounds
    ],
)
def test_readings(whole: float, pieces: list[float], expected: Reading) -> None:
    assert choose(whole, pieces) == expected


@given(
    whole=SCORES,
    honest=st.lists(SCORES, min_size=1, max_size=4),
    added=st.lists(SCORES, max_size=3),
)
def test_added_pieces_never_carry_a_text_past_its_weakest_honest_reading(
    whole: float, honest: list[float], added: list[float]
) -> None:
    """Whatever pieces are added and whatever the whole then scores, the reading is either on
    the honest pieces' side, or no further from zero than the weakest honest piece."""
    pieces = honest + added
    value = _value(whole, pieces, choose(whole, pieces))
    low, high = min(pieces), max(pieces)
    assert low <= value <= high
    if all(h > 0 for h in honest) and value < 0:
        assert abs(value) <= min(abs(h) for h in honest)
    if all(h < 0 for h in honest) and value > 0:
        assert abs(value) <= min(abs(h) for h in honest)
