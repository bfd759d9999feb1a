"""Pieces every service shares: the bus, envelopes, settings, metrics, health and logging."""
