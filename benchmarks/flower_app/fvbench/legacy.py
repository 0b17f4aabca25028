# mypy: ignore-errors
"""Flower's legacy deployment path (gRPC bidi streaming) for benchmarks/flower_overhead.py.

    python -m fvbench.legacy server --port P --nodes N --rounds R --shapes F --stamps F
    python -m fvbench.legacy client --server 127.0.0.1:P

`flwr.server.start_server` and `flwr.client.start_client` (deprecated since Flower 1.13,
still shipped): one server process and one process per client over gRPC, no polling.
Server: Flower's legacy FedAvg strategy, all N clients every round, no federated
evaluation; `evaluate_fn` (called before round 1 and after each round) appends a
timestamp to the stamps file. Client: `fit` returns the arrays it received.
"""

import argparse
import time
from pathlib import Path

import flwr
from flwr.common import ndarrays_to_parameters

from fvbench.app import initial_arrays


class ZeroStepClient(flwr.client.NumPyClient):
    def fit(self, parameters, config):
        return parameters, 1, {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server", default="")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="")
    parser.add_argument("--stamps", default="")
    args = parser.parse_args()
    if args.role == "client":
        flwr.client.start_client(
            server_address=args.server, client=ZeroStepClient().to_client(), insecure=True
        )
        return
    stamps = Path(args.stamps)

    def stamp(server_round, parameters, config):
        with open(stamps, "a") as f:
            f.write(f"{server_round} {time.time():.6f}\n")

    arrays = initial_arrays(args.shapes).to_numpy_ndarrays()
    strategy = flwr.server.strategy.FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.nodes,
        min_evaluate_clients=0,
        min_available_clients=args.nodes,
        evaluate_fn=stamp,
        initial_parameters=ndarrays_to_parameters(arrays),
    )
    flwr.server.start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=flwr.server.ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
    )


if __name__ == "__main__":
    main()
