"""A Flower App for benchmarks/flower_overhead.py (runs in benchmarks/.venv-flwr only)."""
