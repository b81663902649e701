"""Model pieces checked against their plain definitions."""

from __future__ import annotations

import torch

from freshrec.models.layers import Block, causal_allowed


def test_candidate_attention_equals_full_attention_over_the_block_pattern():
    """The reranker's blockwise attention is the full attention over [history; candidates] with
    history causal and each candidate seeing the real history events and itself only."""
    torch.manual_seed(0)
    B, L, C, D = 3, 7, 5, 16
    block = Block(D, heads=2, dropout=0.0).eval()
    h, c = torch.randn(B, L, D), torch.randn(B, C, D)
    history_mask = torch.ones(B, L, dtype=torch.bool)
    history_mask[1, :4] = False  # left padding
    history_mask[2, :] = False  # no history at all: a candidate still sees itself
    hist_allowed = causal_allowed(history_mask)
    top = torch.cat([hist_allowed, torch.zeros(B, 1, L, C, dtype=torch.bool)], dim=-1)
    bottom = torch.cat([history_mask[:, None, None, :].expand(B, 1, C, L), torch.eye(C, dtype=torch.bool).expand(B, 1, C, C)], dim=-1)
    full = block(torch.cat([h, c], dim=1), torch.cat([top, bottom], dim=2))
    bh, bc = block.forward_with_candidates(h, c, hist_allowed, history_mask)
    torch.testing.assert_close(torch.cat([bh, bc], dim=1), full, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(bc).all()
