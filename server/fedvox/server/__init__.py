"""The fedvox aggregation server: gRPC service, round orchestrator, strategies, store."""
