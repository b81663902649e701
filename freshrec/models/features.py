"""Event sequence -> the history tensors of the contract. One implementation for training,
serving and the reference pipeline, so there is no train/serve skew."""

from __future__ import annotations

import numpy as np

from freshrec.config import EVENT_FEATURES, EVENT_TYPES

TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES) if i > 0}


def event_type_index(event_type: str) -> int:
    try:
        return TYPE_INDEX[event_type]
    except KeyError:
        raise ValueError(f"unknown event_type {event_type[:64]!r}; expected one of {sorted(TYPE_INDEX)}") from None


def event_features(timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Numeric features of a user's whole time-ordered sequence -> (n, EVENT_FEATURES) float32.

    0: log1p(seconds since the previous event) / 10: a burst of clicks and a return after a month
       look different; 1 year ~ 1.7.
    1: value centred on a 1-5 rating scale, clipped; 0 when absent (NaN).
    Computed on the full sequence before windowing, so the first event of a window still knows
    its gap.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    gaps = np.diff(ts, prepend=ts[:1] if len(ts) else ts)
    out = np.zeros((len(ts), EVENT_FEATURES), dtype=np.float32)
    out[:, 0] = np.log1p(np.maximum(gaps, 0.0)) / 10.0
    v = np.asarray(values, dtype=np.float32)
    out[:, 1] = np.where(np.isnan(v), 0.0, np.clip((v - 3.0) / 2.0, -3.0, 3.0))
    return out


def left_pad(x: np.ndarray, length: int) -> np.ndarray:
    """Keeps the newest `length` rows and pads on the left with zeros -> (length, ...)."""
    x = x[-length:] if length else x[:0]
    pad = np.zeros((length - len(x),) + x.shape[1:], dtype=x.dtype)
    return np.concatenate([pad, x])


def history_arrays(timestamps: np.ndarray, values: np.ndarray, types: np.ndarray, max_history: int) -> dict[str, np.ndarray]:
    """One user's history (oldest first, n events with known items) -> the contract's history
    tensors without a batch dim, except the item vectors, which the caller gathers where the
    item matrix lives: features (L, F), types (L,), mask (L,)."""
    n = len(types)
    return {
        "history_features": left_pad(event_features(timestamps, values), max_history),
        "history_types": left_pad(np.asarray(types, np.int64), max_history),
        "history_mask": left_pad(np.ones(n, dtype=np.bool_), max_history),
    }
