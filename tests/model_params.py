"""Random parameters for model tests, filled on the host from the abstract init.

Compiling ``model.init`` costs seconds per model on CPU (one threefry kernel per parameter); tests that
only need some weights use this instead. LayerNorm scales and biases get random values too, so a
mis-mapped scale or bias cannot hide behind ones and zeros.
"""

import flax.linen as nn
import jax
import numpy as np


def random_params(model: nn.Module, *args, seed: int = 0, std: float = 0.1, **kwargs) -> dict:
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args, **kwargs))["params"])
    rs = np.random.RandomState(seed)
    return jax.tree.map(lambda s: (rs.standard_normal(s.shape) * std).astype(np.float32), shapes)
