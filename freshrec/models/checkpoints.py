"""Checkpoints of a build: the PyTorch modules by contract name, saved and loaded. Serving (the
reference engine) and the exporter load them from here, not from the training code."""

from __future__ import annotations

from pathlib import Path

import torch

from freshrec.config import ModelConfig
from freshrec.models.reranker import Reranker
from freshrec.models.text_encoder import ContentProjection, TextEncoder
from freshrec.models.towers import ItemTower, UserTower

CHECKPOINTS = "checkpoints"
CONTENT_FILE = "content_projection.pt"


def save_models(out: Path, cfg: ModelConfig, item_tower, user_tower, reranker, content: ContentProjection) -> None:
    """The trained modules and the build's content projection (the text encoder itself is the
    frozen MiniLM of the assets)."""
    d = out / CHECKPOINTS
    d.mkdir(parents=True, exist_ok=True)
    cfg.save(d / "model_config.json")
    torch.save(item_tower.state_dict(), d / "item_tower.pt")
    torch.save(user_tower.state_dict(), d / "user_tower.pt")
    torch.save(reranker.state_dict(), d / "reranker.pt")
    torch.save(content.state_dict(), d / CONTENT_FILE)


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
    text = TextEncoder(minilm, cfg.text.content_dim)
    content = d / CONTENT_FILE
    if not content.exists():
        raise FileNotFoundError(f"{content} missing: this build predates content vectors; run `freshrec build` again")
    text.content.load_state_dict(torch.load(content, weights_only=True))
    modules["text_encoder"] = text.eval()
    return cfg, modules, minilm
