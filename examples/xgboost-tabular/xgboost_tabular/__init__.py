"""Federated XGBoost on a generated tabular binary task: bagging or cyclic training."""
