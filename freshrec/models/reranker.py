"""GPT-style reranker: one causal pass scores every retrieved candidate.

The sequence is [history events..., candidates...]. History tokens attend causally; each
candidate token attends to the whole history and to itself only, so K candidates are scored
independently in one forward pass (the M-FALCON trick of HSTU). Candidates enter as item-tower
vectors, not ids, so the reranker scores items it never saw in training; there is no
vocabulary softmax head.

The score is residual over retrieval: logit = retrieval cosine / temperature + a learned
correction whose head starts at zero, so an untrained reranker ranks exactly as retrieval does
and training can only move it where the sequence context says so.
"""

from __future__ import annotations

import torch
from torch import nn

from freshrec.config import RerankerConfig
from freshrec.models.layers import Block, EventEmbedding, causal_allowed


class Reranker(nn.Module):
    def __init__(self, cfg: RerankerConfig) -> None:
        super().__init__()
        self.embed = EventEmbedding(cfg)
        self.candidate = nn.Linear(cfg.dim, cfg.dim)
        self.candidate_marker = nn.Parameter(torch.zeros(cfg.dim))  # tells candidate tokens from events
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.dim)
        self.score = nn.Linear(cfg.dim, cfg.dim)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.temperature = cfg.retrieval_temperature

    def forward(
        self,
        history_vectors: torch.Tensor,
        history_features: torch.Tensor,
        history_types: torch.Tensor,
        history_mask: torch.Tensor,
        candidate_vectors: torch.Tensor,
        candidate_mask: torch.Tensor,
        candidate_scores: torch.Tensor,
    ) -> torch.Tensor:
        """History (B, L, ...) and candidates (B, C, D), (B, C), (B, C) -> scores (B, C)."""
        h = self.embed(history_vectors, history_features, history_types, history_mask)
        c = self.candidate(candidate_vectors) + self.candidate_marker
        # [history; candidates] with history causal and each candidate seeing the history and
        # itself (layers.SelfAttention.forward_with_candidates computes that pattern blockwise).
        hist_allowed = causal_allowed(history_mask)  # (B, 1, L, L)
        for block in self.blocks:
            h, c = block.forward_with_candidates(h, c, hist_allowed, history_mask)
        out = self.ln(c)  # (B, C, D)
        # Bilinear score against the candidate's own vector keeps the retrieval geometry usable.
        scores = candidate_scores / self.temperature + (self.score(out) * candidate_vectors).sum(-1)
        return scores.masked_fill(~candidate_mask, -1e9)
