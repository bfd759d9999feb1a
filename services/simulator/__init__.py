"""The simulator service: replay and live trading over Kafka, feedback once t+1 is known.

The markets, envs, accounting and metrics it trades on live in the market library
(services/market); this folder is only the service: replay, live, the Kafka mapping and the CLI.
"""
