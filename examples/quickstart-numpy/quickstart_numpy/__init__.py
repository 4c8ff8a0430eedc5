"""Quickstart: softmax regression on scikit-learn's digits, federated with pollinate."""
