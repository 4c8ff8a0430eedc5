"""sklearnmessage: a Flower / scikit-learn app."""

import warnings

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.metrics import log_loss

from sklearnmessage.task import (
    get_model,
    get_model_params,
    load_data,
    set_initial_params,
    set_model_params,
)

# Flower ClientApp
app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""

    # Create the model and apply the received weights
    model = get_model(context.run_config["local-epochs"])
    set_initial_params(model)
    ndarrays = msg.content["arrays"].to_numpy_ndarrays()
    set_model_params(model, ndarrays)

    # Load the data
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    X_train, y_train, _, _ = load_data(partition_id, num_partitions)

    # Train the model on local data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_train, y_train)
    train_logloss = log_loss(y_train, model.predict_proba(X_train))

    # Construct and return reply Message
    model_record = ArrayRecord(get_model_params(model))
    metrics = {"train_logloss": train_logloss, "num-examples": len(X_train)}
    metric_record = MetricRecord(metrics)
    content = RecordDict({"arrays": model_record, "metrics": metric_record})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on local data."""

    # Create the model and apply the received weights
    model = get_model(context.run_config["local-epochs"])
    set_initial_params(model)
    set_model_params(model, msg.content["arrays"].to_numpy_ndarrays())

    # Load the data
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    _, _, X_test, y_test = load_data(partition_id, num_partitions)

    # Evaluate the model on local data
    test_logloss = log_loss(y_test, model.predict_proba(X_test))
    accuracy = model.score(X_test, y_test)

    # Construct and return reply Message
    metrics = {"test_logloss": test_logloss, "accuracy": accuracy, "num-examples": len(X_test)}
    metric_record = MetricRecord(metrics)
    content = RecordDict({"metrics": metric_record})
    return Message(content=content, reply_to=msg)
