"""sklearnmessage: a Flower / scikit-learn app."""

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from sklearnmessage.task import get_model, get_model_params, set_initial_params

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    num_rounds: int = context.run_config["num-server-rounds"]
    fraction_train: float = context.run_config["fraction-train"]

    # Create the initial global model
    model = get_model(context.run_config["local-epochs"])
    set_initial_params(model)
    arrays = ArrayRecord(get_model_params(model))

    # Initialize FedAvg strategy (on all 5 nodes in every round: Flower otherwise sizes
    # round 1 by the nodes connected when it starts, often 2 of 5)
    strategy = FedAvg(fraction_train=fraction_train, min_train_nodes=5, min_available_nodes=5)

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds)

    # Save final model to disk
    print("\nSaving final model to disk...")
    np.savez("final_model.npz", *result.arrays.to_numpy_ndarrays())
