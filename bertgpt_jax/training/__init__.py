"""The training engine, the same for every task: state, step, loop, checkpointing, metrics, optimizers.

    result = training.run(training.TrainConfig(output_dir=..., model="bert-base"), task)
"""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "model_config": "config",
    "run": "loop",
    "NonFiniteError": "loop",
    "TrainState": "state",
    "Checkpointer": "checkpointing",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
