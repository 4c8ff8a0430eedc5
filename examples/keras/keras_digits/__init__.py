"""Keras on scikit-learn's digits, federated with pollinate.

Keras picks its backend when it is first imported; the adapter, imported here before any
module of this package imports ``keras``, picks an installed one if none is set.
"""

from pollinate.frameworks import keras as _adapter  # noqa: F401  (first: chooses the backend)
