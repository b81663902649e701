"""Two-tower retrieval: the item tower (text -> vector) and the user tower (events -> vector)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from freshrec.config import ItemTowerConfig, SequenceConfig, TEXT_DIM
from freshrec.models.layers import Block, EventEmbedding, causal_allowed


class ItemTower(nn.Module):
    """Frozen sentence embedding of the item text -> trained projection (+ learned id row).

    Row 0 of the id table is fixed at zero: unseen items (and, with `id_dropout`, a share of
    seen ones in training) are placed by their text alone, so a new item is recommendable the
    moment its text is known.
    """

    def __init__(self, cfg: ItemTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Sequential(
            nn.Linear(TEXT_DIM, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.dim)
        )
        self.ids = nn.Embedding(cfg.id_vocab + 1, cfg.dim, padding_idx=0)
        nn.init.zeros_(self.ids.weight)  # ids start neutral; text carries the early signal

    def forward(self, text_embedding: torch.Tensor, id_index: torch.Tensor) -> torch.Tensor:
        """text_embedding: (B, E); id_index: (B, 1) int64 -> (B, D) unit norm."""
        ids = id_index[:, 0]
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(ids.shape, device=ids.device) >= self.cfg.id_dropout
            ids = ids * keep
        return F.normalize(self.proj(text_embedding) + self.ids(ids), dim=-1)


class UserTower(nn.Module):
    """Causal transformer over the user's latest events; the newest position is the user.

    Causal attention lets training use every prefix of a window in one pass (SASRec-style),
    while serving reads only the last position.
    """

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        self.embed = EventEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.dim)

    def encode(
        self, history_vectors: torch.Tensor, history_features: torch.Tensor, history_types: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """Every prefix's user vector: (B, L, D) unit norm (position t sees events <= t)."""
        x = self.embed(history_vectors, history_features, history_types, history_mask)
        allowed = causal_allowed(history_mask)
        for block in self.blocks:
            x = block(x, allowed)
        return F.normalize(self.head(self.ln(x)), dim=-1)

    def forward(
        self, history_vectors: torch.Tensor, history_features: torch.Tensor, history_types: torch.Tensor, history_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D), (B, L, F), (B, L), (B, L) -> (B, D): the user vector after the newest event."""
        return self.encode(history_vectors, history_features, history_types, history_mask)[:, -1]
