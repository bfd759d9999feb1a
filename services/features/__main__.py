"""Entrypoint: `python -m services.features` consumes bars and news and serves features."""

from services.common.service import exit_with
from services.features.service import main

if __name__ == "__main__":
    exit_with(main())
