"""`python -m services.sentiment`: consume news.raw.v1, publish news.enriched.v1."""

from services.sentiment.service import main

if __name__ == "__main__":
    raise SystemExit(main())
