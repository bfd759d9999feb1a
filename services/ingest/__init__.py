"""ingest: news from files, RSS/Atom feeds, HTTP and the synthetic generator into news.raw.v1."""
