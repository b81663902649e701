"""The retrieval index over the item table, by kind: the exact scan (in `item_index`), the int8
scan (`sq8`) and the HNSW graph (`hnsw`); `ItemIndex` picks and refreshes them."""

from freshrec.index.hnsw import HnswGraph
from freshrec.index.item_index import ANN_THRESHOLD, INDEX_KINDS, RESCORE_SLACK, SQ8_THRESHOLD, ItemIndex, ItemRows, resolve_kind
from freshrec.index.sq8 import Sq8Scan

__all__ = ["ANN_THRESHOLD", "INDEX_KINDS", "RESCORE_SLACK", "SQ8_THRESHOLD", "HnswGraph", "ItemIndex", "ItemRows", "Sq8Scan", "resolve_kind"]
