"""Breast-cancer diagnosis by logistic regression, federated across hospitals with pollinate."""
