"""Seeds of the trainers' private random streams, one per (run seed, process, stream)."""

from __future__ import annotations

import numpy as np


def derive_seed(seed: int, process_index: int, stream: int = 0) -> int:
    """An independent 63-bit seed per (run seed, process, stream), via NumPy's SeedSequence hashing.

    ``seed + rank`` would make process 1 of a run with seed 0 repeat process 0 of a run with seed 1; hashing the
    triple gives every combination its own stream.
    """
    state = np.random.SeedSequence([seed, process_index, stream]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
