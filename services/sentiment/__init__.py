"""sentiment: LLM summary and sentiment score for each news item (news.raw -> news.enriched)."""
