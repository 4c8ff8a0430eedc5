"""A Flax MLP on scikit-learn's digits, trained with optax and federated with pollinate."""
