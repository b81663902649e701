"""Checkpoints of a build: the PyTorch modules by contract name, saved and loaded. Serving (the
reference engine) and the exporter load them from here, not from the training code."""

from __future__ import annotations

from pathlib import Path

import torch

from freshrec.config import ModelConfig
from freshrec.models.reranker import Reranker
from freshrec.models.text_encoder import TextEncoder
from freshrec.models.towers import ItemTower, UserTower

CHECKPOINTS = "checkpoints"


def save_models(out: Path, cfg: ModelConfig, item_tower, user_tower, reranker) -> None:
    d = out / CHECKPOINTS
    d.mkdir(parents=True, exist_ok=True)
    cfg.save(d / "model_config.json")
    torch.save(item_tower.state_dict(), d / "item_tower.pt")
    torch.save(user_tower.state_dict(), d / "user_tower.pt")
    torch.save(reranker.state_dict(), d / "reranker.pt")


def load_models(build_dir: Path) -> tuple[ModelConfig, dict[str, torch.nn.Module], Path]:
    """Checkpoints of a build -> (config, modules by contract name, MiniLM folder)."""
    from freshrec.assets import minilm_dir

    d = Path(build_dir) / CHECKPOINTS
    cfg = ModelConfig.load(d / "model_config.json")
    modules: dict[str, torch.nn.Module] = {
        "item_tower": ItemTower(cfg.item),
        "user_tower": UserTower(cfg.user),
        "reranker": Reranker(cfg.reranker),
    }
    for name, m in modules.items():
        m.load_state_dict(torch.load(d / f"{name}.pt", weights_only=True))
        m.eval()
    minilm = minilm_dir()
    modules["text_encoder"] = TextEncoder(minilm).eval()
    return cfg, modules, minilm
