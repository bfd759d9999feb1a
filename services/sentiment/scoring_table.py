"""Scoring a table of texts (the CLI's CSV path): sentiment, label and summary per row."""

from __future__ import annotations

import pandas as pd

from services.sentiment.scorer import LLMScorer
from services.sentiment.service import build_scorer
from services.sentiment.settings import SentimentSettings
from services.sentiment.summarizer import Summarizer


def score_table(table: pd.DataFrame, settings: SentimentSettings) -> pd.DataFrame:
    """`table` with `sentiment`, `label` and `summary` added; raises KeyError without `text`."""
    if "text" not in table.columns:
        raise KeyError(f"the CSV needs a `text` column; it has {list(table.columns)}")
    texts = [str(t) for t in table["text"]]
    empty = [i + 2 for i, t in enumerate(texts) if not t.strip()]  # +2: header and 1-based rows
    if empty:
        raise ValueError(f"empty text on CSV line(s) {empty[:10]}")
    scorer = build_scorer(settings)
    scores = scorer.score(texts)
    out = table.copy()
    out["sentiment"] = [round(s.sentiment, 4) for s in scores]
    out["label"] = [s.label for s in scores]
    out["summary"] = _summaries(table, texts, scorer, settings)
    out.attrs["model"] = f"{scorer.name}@{scorer.version}"
    return out


def _summaries(
    table: pd.DataFrame, texts: list[str], scorer: object, settings: SentimentSettings
) -> list[str]:
    """Per (ticker, date) group when the CSV has those columns, else per row; the row's own
    text when summaries are off or there is no LLM."""
    if not settings.summaries or not isinstance(scorer, LLMScorer):
        return texts
    summarizer = Summarizer(
        scorer.model, scorer.tokenizer, max_new_tokens=settings.summary_max_new_tokens
    )
    has_groups = {"ticker", "date"} <= set(table.columns)
    out = []
    for i, text in enumerate(texts):
        if has_groups:
            same = (table["ticker"] == table["ticker"].iloc[i]) & (
                table["date"] == table["date"].iloc[i]
            )
            group = [texts[j] for j in range(len(texts)) if same.iloc[j]]
            out.append(summarizer.summarize(str(table["ticker"].iloc[i]), group))
        else:
            out.append(summarizer.summarize("", [text]))
    return out
