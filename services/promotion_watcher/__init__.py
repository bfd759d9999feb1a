"""The promotion watcher: models.promotions.v1 and market.feedback.v1 as Prometheus metrics."""
