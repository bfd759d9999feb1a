"""`python -m services.promotion_watcher`: the promotion watcher service."""

from services.promotion_watcher.service import main

if __name__ == "__main__":
    raise SystemExit(main())
