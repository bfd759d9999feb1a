"""The policy service: FLAG-Trader LLM actor-critic, versioned artifacts, and the KServe server."""
