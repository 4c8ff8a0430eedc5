"""Adapters between ML frameworks and pollinate's ``Arrays``, with ready training loops.

Each framework has its own module, imported only when asked for, so ``import pollinate``
never imports a framework you did not choose::

    from pollinate.frameworks import pytorch   # needs the `torch` extra
    from pollinate.frameworks import keras     # `keras`
    from pollinate.frameworks import jax       # `jax` (JAX, Flax, optax)
    from pollinate.frameworks import sklearn   # `sklearn`
    from pollinate.frameworks import xgboost   # `xgboost`
"""

# Nothing to import from here: each adapter is a module of its own, imported by name.
__all__: list[str] = []
