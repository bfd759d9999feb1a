"""`python -m services.trainer`: the embedded trainer service (feedback consumer + cycles)."""

from __future__ import annotations

import sys

from services.trainer.service import main

if __name__ == "__main__":
    sys.exit(main())
