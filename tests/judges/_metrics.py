"""Distances between two engines' next-token distributions, shared by the judges.

Mean KL is the judges' main yardstick: on the same weights it is ~1e-3 nats (activation
rounding), between two different models of the same shapes it is several nats, so a gate
between them separates by orders of magnitude (issue 9), which relative L2 of the logits
(~0.02 against ~1.4) cannot.
"""

from __future__ import annotations

import numpy as np


def log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def mean_kl(ref, got) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(got)), in nats ([..., vocab] logits)."""
    p, q = log_softmax(ref), log_softmax(got)
    return float(np.mean((np.exp(p) * (p - q)).sum(-1)))
