"""The fedvox site client: data -> trainer -> runner -> connection (gRPC, dial-out only)."""
