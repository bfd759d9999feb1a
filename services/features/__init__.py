"""The features service: market and news features per ticker, pushed to Feast online and offline."""
