"""Event sequence -> the history tensors of the contract: the one recipe that training, serving
and the benchmarks' input generation share, so there is no train/serve skew.

A history window is the newest `L` events before a point, oldest first, left-padded. Each event
carries its log time gap to the *previous* event, so the window's oldest event needs the event
before it: training computes the features over a user's whole sequence and then cuts windows;
serving reads `L + HISTORY_CONTEXT` events from the store and computes them over those. Both
then cut with `windows`, and `tests/models/test_features.py` holds them equal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from freshrec.config import EVENT_FEATURES, EVENT_TYPES

TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES) if i > 0}
HISTORY_CONTEXT = 1  # events read before a served window: its oldest event's time gap needs one


def event_type_index(event_type: str) -> int:
    try:
        return TYPE_INDEX[event_type]
    except KeyError:
        raise ValueError(f"unknown event_type {event_type[:64]!r}; expected one of {sorted(TYPE_INDEX)}") from None


def event_features(timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Numeric features of a time-ordered sequence -> (n, EVENT_FEATURES) float32.

    0: log1p(seconds since the previous event) / 10: a burst of clicks and a return after a month
       look different; 1 year ~ 1.7. The first event given has no previous one: gap 0.
    1: value centred on a 1-5 rating scale, clipped; 0 when absent (NaN).
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    gaps = np.diff(ts, prepend=ts[:1] if len(ts) else ts)
    out = np.zeros((len(ts), EVENT_FEATURES), dtype=np.float32)
    out[:, 0] = np.log1p(np.maximum(gaps, 0.0)) / 10.0
    v = np.asarray(values, dtype=np.float32)
    out[:, 1] = np.where(np.isnan(v), 0.0, np.clip((v - 3.0) / 2.0, -3.0, 3.0))
    return out


def windows(rows: list[np.ndarray], types: list[np.ndarray], features: list[np.ndarray], ends: list[int], length: int) -> dict[str, np.ndarray]:
    """For each sequence b, its events [ends[b] - length, ends[b]) left-padded to `length`.

    Args:
        rows: per sequence, (n,) int64 item rows (of the catalog or the serving index).
        types: per sequence, (n,) int64 event type indices.
        features: per sequence, (n, F) float32 from `event_features` over that whole sequence.
        ends: per sequence, the window's end (exclusive).
    Returns:
        "rows" (B, length) int64 (0 at padding), and the contract's "history_types" (B, length),
        "history_features" (B, length, F), "history_mask" (B, length); the caller gathers
        "history_vectors" from its item matrix (`gather_vectors`).
    """
    B = len(rows)
    F = features[0].shape[1] if B else EVENT_FEATURES
    out = {
        "rows": np.zeros((B, length), np.int64),
        "history_types": np.zeros((B, length), np.int64),
        "history_features": np.zeros((B, length, F), np.float32),
        "history_mask": np.zeros((B, length), np.bool_),
    }
    for b, end in enumerate(ends):
        start = max(0, end - length)
        n = end - start
        if n <= 0:
            continue
        out["rows"][b, length - n :] = rows[b][start:end]
        out["history_types"][b, length - n :] = types[b][start:end]
        out["history_features"][b, length - n :] = features[b][start:end]
        out["history_mask"][b, length - n :] = True
    return out


def gather_vectors(matrix: Any, rows: Any, mask: Any) -> Any:
    """(N, D) item matrix, (B, L) rows and mask -> (B, L, D) history vectors, zero at padding.
    numpy or torch alike (the caller passes rows and mask of the matrix's kind)."""
    return matrix[rows] * mask[..., None]


def history_arrays(timestamps: np.ndarray, values: np.ndarray, types: np.ndarray, rows: np.ndarray, max_history: int) -> dict[str, np.ndarray]:
    """One user's latest events as served: up to `max_history + HISTORY_CONTEXT` events, oldest
    first, with their item rows -> `windows` of the newest `max_history` with a batch dim of 1.
    The features are computed over every event given, so the window's oldest event has the gap
    training gives it."""
    feats = event_features(timestamps, values)
    n = len(types)
    return windows([np.asarray(rows, np.int64)], [np.asarray(types, np.int64)], [feats], [n], max_history)
