"""Quickstart: a small CNN on scikit-learn's digits, federated with pollinate's PyTorch adapter."""
