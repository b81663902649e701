"""In-memory retrieval index over the item table, refreshed incrementally from the store.

Each model instance keeps one; before serving it applies the items written since the version
it last saw, so an upserted item is retrievable on every instance with no rebuild.
"""

from __future__ import annotations

import torch

from freshrec.store.base import Item, StateStore


class ItemIndex:
    def __init__(self, dim: int, device: torch.device | str = "cpu") -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.item_ids: list[str] = []
        self.rows: dict[str, int] = {}
        self._matrix = torch.zeros(0, dim, device=self.device)  # capacity grows by doubling
        self.version = 0

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def matrix(self) -> torch.Tensor:
        """(N, D) item vectors, row i = item_ids[i]."""
        return self._matrix[: len(self.item_ids)]

    def refresh(self, store: StateStore) -> int:
        """Applies items written since the last refresh; returns how many changed."""
        items, version = store.items_since(self.version)
        if items:
            self.apply(items)
        self.version = version
        return len(items)

    def apply(self, items: list[Item]) -> None:
        new = [it for it in items if it.item_id not in self.rows]
        need = len(self.item_ids) + len(new)
        if need > self._matrix.shape[0]:
            grown = torch.zeros(max(need, 2 * self._matrix.shape[0], 1024), self.dim, device=self.device)
            grown[: len(self.item_ids)] = self.matrix
            self._matrix = grown
        for it in new:
            self.rows[it.item_id] = len(self.item_ids)
            self.item_ids.append(it.item_id)
        rows = torch.tensor([self.rows[it.item_id] for it in items], dtype=torch.long, device=self.device)
        vecs = torch.stack([torch.from_numpy(it.vector.copy()) for it in items]).to(self.device)
        self._matrix[rows] = vecs

    def search(self, query: torch.Tensor, k: int, exclude_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inner-product top-k. query (D,) -> rows (k',), scores (k',), best first;
        k' = min(k, items not excluded)."""
        scores = self.matrix @ query  # (N,)
        if exclude_rows:
            scores[torch.tensor(exclude_rows, dtype=torch.long, device=self.device)] = float("-inf")
        k = min(k, len(self.item_ids) - len(set(exclude_rows)))
        if k <= 0:
            return torch.zeros(0, dtype=torch.long, device=self.device), torch.zeros(0, device=self.device)
        top = torch.topk(scores, k)
        return top.indices, top.values
