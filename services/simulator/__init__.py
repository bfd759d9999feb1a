"""The simulator: markets, trading environments, accounting, metrics, backtests and the service."""
