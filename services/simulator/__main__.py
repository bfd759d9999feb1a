"""`python -m services.simulator` (replay or live, from RLMF_SIMULATOR_MODE)."""

from services.simulator.service import main

if __name__ == "__main__":
    raise SystemExit(main())
