"""`python -m services.features`: consume bars and news, serve features."""

from services.features.service import main

if __name__ == "__main__":
    raise SystemExit(main())
