"""Shipped parameter files of the regime-switching market (`default`, `regime-shift`)."""
