"""Entry point: `python -m services.simulator` (replay or live, from RLMF_SIMULATOR_MODE)."""

from services.common.service import exit_with
from services.simulator.service import main

if __name__ == "__main__":
    exit_with(main())
