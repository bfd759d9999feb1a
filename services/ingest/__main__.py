"""`python -m services.ingest`: files, feeds and HTTP news into news.raw.v1."""

from services.ingest.service import main

if __name__ == "__main__":
    raise SystemExit(main())
