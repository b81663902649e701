"""Frozen all-MiniLM-L6-v2 sentence encoder and its tokenizer (no model hub: a local folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from freshrec.models.tokenizer import Tokenizer


class ContentProjection(nn.Module):
    """Sentence embedding -> content vector: centred on the catalog's mean embedding, projected
    on the catalog's first principal axes, unit norm. Centring removes MiniLM's anisotropy (every
    "Title (Year). Genres: X" text sits ~0.4 cosine from every other); the projection keeps the
    meaning in few numbers. Fitted once per build (`fit`), then fixed: training, upserts and
    queries share it through the text encoder's graph."""

    def __init__(self, text_dim: int, content_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("axes", torch.zeros(text_dim, content_dim))

    @torch.no_grad()
    def fit(self, embeddings: np.ndarray) -> "ContentProjection":
        """Principal axes of (N, text_dim) catalog embeddings (fewer than content_dim when the
        catalog is that small: the rest stay zero)."""
        x = torch.as_tensor(np.asarray(embeddings, np.float32))
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.axes.shape[1], vt.shape[0])
        self.mean.copy_(mean)
        self.axes.zero_()
        self.axes[:, :k] = vt[:k].T
        return self

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize((embedding - self.mean) @ self.axes, dim=-1)


class TextEncoder(nn.Module):
    """BERT-style encoder + attention-masked mean pooling + L2 norm (sentence-transformers recipe),
    and the content projection of that embedding."""

    def __init__(self, model_dir: Path, content_dim: int = 64) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(model_dir))
        self.bert.eval()
        for p in self.bert.parameters():
            p.requires_grad_(False)
        self.content = ContentProjection(self.bert.config.hidden_size, content_dim)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T), (B, T) int64 -> (B, 384) unit norm."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T), (B, T) int64 -> text_embedding (B, 384), content_vector (B, content_dim)."""
        emb = self.embed(input_ids, attention_mask)
        return emb, self.content(emb)


@torch.no_grad()
def embed_texts(encoder: TextEncoder, tokenizer: Tokenizer, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Embeds texts in batches -> (N, 384) float32."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[i : i + batch_size])
        out.append(encoder.embed(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)
