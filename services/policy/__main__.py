"""Entrypoint: `python -m services.policy --model_dir DIR [--http_port P]` (KServe's flags work)."""

from __future__ import annotations

import sys

from services.policy.server import main

if __name__ == "__main__":
    sys.exit(main())
