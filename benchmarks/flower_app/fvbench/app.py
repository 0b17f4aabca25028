# mypy: ignore-errors
"""Flower's side of benchmarks/flower_overhead.py: FedAvg over the default UNet's arrays,
zero local work, so that only the framework is timed.

ServerApp: the initial arrays are float32 arrays of the default UNet's shapes (read from
`shapes-file`, seeded), sent with Flower's own FedAvg strategy to every node each round
(fraction_evaluate=0: no federated evaluation). Flower calls `evaluate_fn` before round 1
and after each round; it appends a timestamp to `stamps-file`, whose differences are the
round times. ClientApp: returns the arrays it received unchanged (what a client with zero
local steps returns) with a num-examples count.
"""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"]
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)


def initial_arrays(shapes_file: str) -> ArrayRecord:
    shapes = json.loads(Path(shapes_file).read_text())
    rng = np.random.default_rng(0)
    return ArrayRecord([rng.standard_normal(shape, dtype=np.float32) * 0.01 for _, shape in shapes])


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    stamps = Path(str(config["stamps-file"]))
    nodes = int(config["nodes"])
    # every node takes part in every round, as in fedvox's benchmark run
    deadline = time.monotonic() + 300
    while len(list(grid.get_node_ids())) < nodes and time.monotonic() < deadline:
        time.sleep(0.1)

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        with open(stamps, "a") as f:
            f.write(f"{server_round} {time.time():.6f}\n")

    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(str(config["shapes-file"])),
        num_rounds=int(config["num-rounds"]),
        evaluate_fn=stamp,
    )
