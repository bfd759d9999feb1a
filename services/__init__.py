"""RLMF: microservices that trade with an LLM policy and re-align it to market feedback."""
