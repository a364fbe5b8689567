"""A Grain MapDataset whose items are built a batch at a time, by one vectorised ``examples(indices)``."""

from __future__ import annotations

import grain
import numpy as np


class BatchedSource(grain.MapDataset):
    """Subclasses define ``examples(indices_B) -> dict of [B, ...] arrays``; single items are rows of it.

    Grain's batched reads (``_getitems``) then cost one vectorised call instead of B Python-level ones.
    """

    def examples(self, indices_B: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch = self.examples(np.array([index]))
        return {name: value[0] for name, value in batch.items()}

    def _getitems(self, indices):
        batch = self.examples(np.asarray(indices))
        return [{name: value[i] for name, value in batch.items()} for i in range(len(indices))]
