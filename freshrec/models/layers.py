"""Transformer pieces shared by the user tower and the reranker (nanoGPT-style, pre-norm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from freshrec.config import EVENT_FEATURES, EVENT_TYPES, SequenceConfig


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); allowed: (B, 1, T, T) bool, True where query t may attend to key s."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def forward_with_candidates(
        self, h: torch.Tensor, c: torch.Tensor, hist_allowed: torch.Tensor, history_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History tokens h (B, L, D) attend among themselves as `hist_allowed` (B, 1, L, L) says;
        each candidate token of c (B, C, D) attends to the real history events (history_mask
        (B, L)) and to itself, never to another candidate. The same as `forward` over [h; c] with
        that block pattern, but the candidate rows cost O(C*L) instead of O((L+C)^2): the C x C
        block of the full pattern is all masked except its diagonal."""
        B, L, D = h.shape
        C, H = c.shape[1], self.heads
        drop = self.dropout if self.training else 0.0

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.view(B, n, H, D // H).transpose(1, 2)  # (B, H, n, Dh)

        qh, kh, vh = (heads(t, L) for t in self.qkv(h).split(D, dim=-1))
        qc, kc, vc = (heads(t, C) for t in self.qkv(c).split(D, dim=-1))
        yh = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=hist_allowed, dropout_p=drop)
        scale = (D // H) ** -0.5
        to_history = (qc @ kh.transpose(-1, -2)) * scale  # (B, H, C, L)
        to_history = to_history.masked_fill(~history_mask[:, None, None, :], float("-inf"))
        to_self = (qc * kc).sum(-1, keepdim=True) * scale  # (B, H, C, 1): never masked, so no empty row
        p = F.dropout(torch.softmax(torch.cat([to_history, to_self], dim=-1), dim=-1), drop, self.training)
        yc = p[..., :L] @ vh + p[..., L:] * vc
        return self.out(yh.transpose(1, 2).reshape(B, L, D)), self.out(yc.transpose(1, 2).reshape(B, C, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.mlp(self.ln2(x))

    def forward_with_candidates(
        self, h: torch.Tensor, c: torch.Tensor, hist_allowed: torch.Tensor, history_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` over [h; c] where candidates see the history and themselves only."""
        ah, ac = self.attn.forward_with_candidates(self.ln1(h), self.ln1(c), hist_allowed, history_mask)
        h, c = h + self.drop(ah), c + self.drop(ac)
        return h + self.mlp(self.ln2(h)), c + self.mlp(self.ln2(c))


def causal_allowed(mask: torch.Tensor) -> torch.Tensor:
    """Attention pattern over a left-padded history.

    mask: (B, L) bool, True at real events. Returns (B, 1, L, L): query t sees keys s <= t that
    are real events, and always itself, so a padded row never softmaxes over nothing (no NaN).
    """
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(L, dtype=torch.bool, device=mask.device)
    return ((causal & mask[:, None, :]) | eye)[:, None, :, :]


class EventEmbedding(nn.Module):
    """Embeds one history position: item vector + event type + numeric features + position."""

    def __init__(self, cfg: SequenceConfig) -> None:
        super().__init__()
        self.item = nn.Linear(cfg.dim, cfg.dim)
        self.event_type = nn.Embedding(len(EVENT_TYPES), cfg.dim, padding_idx=0)
        self.features = nn.Linear(EVENT_FEATURES, cfg.dim)
        self.position = nn.Embedding(cfg.max_history, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.max_history = cfg.max_history

    def forward(
        self, vectors: torch.Tensor, features: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, L, D), (B, L, F), (B, L), (B, L) -> (B, L, D). Positions count back from the
        newest event (L-1 = newest), so a short and a long history agree on what 'latest' is."""
        L = vectors.shape[1]
        pos = torch.arange(L, device=vectors.device) + (self.max_history - L)
        x = self.item(vectors) + self.event_type(types) + self.features(features) + self.position(pos)[None]
        return self.drop(x * mask[..., None].to(x.dtype))
