"""`python -m services.policy --model_dir DIR [--http_port P]` (KServe's flags work)."""

from services.policy.service import main

if __name__ == "__main__":
    raise SystemExit(main())
