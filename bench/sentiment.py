"""Sentiment throughput and accuracy: the LLM at batch 1, 8 and 32 against the VADER lexicon,
measured in the same run, on the hand-written labelled headlines in tests/data.

Prints one JSON line on stdout (progress on stderr). Throughput of the LLM at batch 1 and 8 is
measured on a subset (8 and 24 headlines) to keep the bench short on 2 cores; batch 32 runs on
all of them. Accuracy is sign accuracy: a score > 0 must go with `positive`, < 0 with
`negative`; a score of exactly 0 counts as wrong (the lexicon gives 0 when it knows no word).

    .venv/bin/python bench/sentiment.py [--model-dir models/SmolLM2-135M-Instruct]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.common.model_files import smollm2_dir  # noqa: E402
from services.sentiment.scorer import LexiconScorer, LLMOptions, LLMScorer, SentimentScorer  # noqa: E402

LABELLED = REPO / "tests" / "data" / "financial_headlines.csv"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def accuracy(scorer: SentimentScorer, texts: list[str], labels: list[str]) -> float:
    scores = scorer.score(texts)
    right = sum(
        (s.sentiment > 0 and y == "positive") or (s.sentiment < 0 and y == "negative")
        for s, y in zip(scores, labels, strict=True)
    )
    return round(right / len(labels), 4)


def items_per_s(scorer: SentimentScorer, texts: list[str], repeat: int = 1) -> float:
    scorer.score(texts[:2])  # warm-up: first-call allocations are not throughput
    started = time.perf_counter()
    for _ in range(repeat):
        scorer.score(texts)
    return round(len(texts) * repeat / (time.perf_counter() - started), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=smollm2_dir(REPO / "models"))
    parser.add_argument(
        "--no-prompt-variants",
        action="store_true",
        help="Skip the accuracy of the plain and calibrated prompts.",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    table = pd.read_csv(LABELLED)
    texts, labels = table["text"].tolist(), table["label"].tolist()

    progress("lexicon ...")
    lexicon = LexiconScorer()
    lexicon_rate = items_per_s(lexicon, texts, repeat=20)
    lexicon_acc = accuracy(lexicon, texts, labels)

    rates: dict[str, float] = {}
    for batch, subset in ((1, 8), (8, 24), (32, len(texts))):
        progress(f"llm batch {batch} on {subset} headlines ...")
        scorer = LLMScorer(args.model_dir, LLMOptions(batch_size=batch))
        rates[f"llm_batch_{batch}"] = items_per_s(scorer, texts[:subset])
    llm_acc = accuracy(scorer, texts, labels)  # batch size does not change scores (unit-tested)
    progress("llm batch 32 with the prefix cache off (the baseline) ...")
    uncached = LLMScorer(args.model_dir, LLMOptions(batch_size=32, prefix_cache=False))
    rates["llm_batch_32_prefix_cache_off"] = items_per_s(uncached, texts)
    prompt_tokens = {
        "shared_prefix": scorer.prefix_tokens,
        "mean_per_item": round(sum(scorer.suffix_tokens(t) for t in texts) / len(texts), 1),
    }

    variants: dict[str, float] = {}
    if not args.no_prompt_variants:
        for name, options in (
            ("zero_shot", LLMOptions(batch_size=32, few_shot=False)),
            ("few_shot_calibrated", LLMOptions(batch_size=32, calibrate=True)),
        ):
            progress(f"llm accuracy, {name} prompt ...")
            variants[name] = accuracy(LLMScorer(args.model_dir, options), texts, labels)

    result = {
        "bench": "sentiment",
        "model": args.model_dir.name,
        "labelled_headlines": len(texts),
        "items_per_s": {"lexicon": lexicon_rate, **rates},
        "throughput_ratio_lexicon_over_llm_batch_32": round(
            lexicon_rate / rates["llm_batch_32"], 1
        ),
        "llm_batch_32_within_10x_of_lexicon": lexicon_rate / rates["llm_batch_32"] <= 10,
        "prefix_cache_speedup_batch_32": round(
            rates["llm_batch_32"] / rates["llm_batch_32_prefix_cache_off"], 2
        ),
        "prompt_tokens": prompt_tokens,
        "model_parameters": sum(p.numel() for p in scorer.model.parameters()),
        "accuracy": {
            "lexicon": lexicon_acc,
            "llm_few_shot": llm_acc,
            **{f"llm_{k}": v for k, v in variants.items()},
        },
        "llm_more_accurate_than_lexicon": llm_acc > lexicon_acc,
        "llm_throughput_subsets": {"batch_1": 8, "batch_8": 24, "batch_32": len(texts)},
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
