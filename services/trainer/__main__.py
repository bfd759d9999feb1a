"""`python -m services.trainer`: the embedded trainer service (feedback consumer + cycles)."""

from services.trainer.service import main

if __name__ == "__main__":
    raise SystemExit(main())
