"""The fusion network: early, late and attention (hybrid) fusion behind one module (docs/fusion.md).

Every variant takes the same five tensors — ``text`` (b, 384), ``image`` (b, 81), ``face`` (b, 7),
``audio`` (b, 8), ``mask`` (b, 3: image, face, audio present) — and returns ``intent_logits`` (b, n_intents),
``refers_logit`` (b, 1), ``frustration_logit`` (b, 1). Each optional input is multiplied by its mask column
inside the graph, so a masked modality cannot influence the output whatever its tensor holds.

* ``early``: one MLP over the concatenated masked vectors and the mask itself.
* ``late``: one small network per modality, each giving all three outputs; the outputs are summed with learned
  non-negative per-modality, per-task weights, a missing modality contributing nothing (a product of experts in
  log-odds space).
* ``attention`` (hybrid): each modality becomes a token (text as two tokens), a two-layer transformer encoder
  with a key-padding mask lets them attend to each other, and the heads read the CLS token *and* the text
  projection (the hybrid part: intent does not have to squeeze through the attention bottleneck).

Attention is written out (matmuls and a softmax) rather than ``nn.MultiheadAttention``: the fused kernel
exports to ONNX as one opaque node on some torch versions, and plain MatMuls are what static INT8 quantises.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from runtime.fusion import OPTIONAL, TEXT_DIM

KINDS = ("early", "late", "attention")
DEFAULT_DIMS = {"text": TEXT_DIM, "image": 81, "face": 7, "audio": 8}


class _Heads(nn.Module):
    def __init__(self, d: int, n_intents: int):
        super().__init__()
        self.intent = nn.Linear(d, n_intents)
        self.refers = nn.Linear(d, 1)
        self.frustration = nn.Linear(d, 1)

    def forward(self, h):
        return self.intent(h), self.refers(h), self.frustration(h)


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out), nn.ReLU())


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, bias):  # x (b, t, d); bias (b, 1, 1, t): 0 where present, -1e4 where missing
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh) + bias, dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = _Attention(d, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def forward(self, x, bias):
        x = x + self.att(self.n1(x), bias)
        return x + self.ff(self.n2(x))


class FusionNet(nn.Module):
    def __init__(self, kind: str, n_intents: int, dims: dict[str, int] | None = None, hidden: int = 256,
                 d_token: int = 64, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown fusion variant {kind!r}; choose from {', '.join(KINDS)}")
        self.kind, self.n_intents = kind, n_intents
        self.dims = dict(dims or DEFAULT_DIMS)
        self.config = {"kind": kind, "n_intents": n_intents, "dims": self.dims, "hidden": hidden, "d_token": d_token,
                       "layers": layers, "heads": heads, "dropout": dropout}
        dt, opt = self.dims["text"], [self.dims[m] for m in OPTIONAL]
        if kind == "early":
            self.body = nn.Sequential(nn.Linear(dt + sum(opt) + len(OPTIONAL), hidden), nn.ReLU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Dropout(dropout))
            self.heads = _Heads(hidden // 2, n_intents)
        elif kind == "late":
            self.encoders = nn.ModuleList([_mlp(dt, hidden, hidden // 2, dropout)]
                                          + [_mlp(d, 64, 32, dropout) for d in opt])
            self.expert_heads = nn.ModuleList([_Heads(hidden // 2, n_intents)] + [_Heads(32, n_intents) for _ in opt])
            # Per modality, per task (intent, refers, frustration): softplus(weight) ≥ 0.
            self.weights = nn.Parameter(torch.zeros(1 + len(OPTIONAL), 3))
        else:
            self.text_tokens = 2
            self.text_proj = nn.Sequential(nn.Linear(dt, hidden), nn.ReLU(), nn.Dropout(dropout))
            self.tok_text = nn.Linear(hidden, self.text_tokens * d_token)
            self.tok_opt = nn.ModuleList([nn.Linear(d, d_token) for d in opt])
            self.cls = nn.Parameter(torch.zeros(1, 1, d_token))
            self.pos = nn.Parameter(torch.randn(1, 1 + self.text_tokens + len(OPTIONAL), d_token) * 0.02)
            self.blocks = nn.ModuleList([_Block(d_token, heads, dropout) for _ in range(layers)])
            self.norm = nn.LayerNorm(d_token)
            self.heads = _Heads(d_token + hidden, n_intents)

    def forward(self, text, image, face, audio, mask):
        xs = [image * mask[:, 0:1], face * mask[:, 1:2], audio * mask[:, 2:3]]
        if self.kind == "early":
            return self.heads(self.body(torch.cat([text, *xs, mask], dim=1)))
        if self.kind == "late":
            outs = [self.expert_heads[0](self.encoders[0](text))]
            outs += [self.expert_heads[i + 1](self.encoders[i + 1](x)) for i, x in enumerate(xs)]
            w = nn.functional.softplus(self.weights)
            present = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (b, 1 + optional)
            return tuple(sum(present[:, m : m + 1] * w[m, task] * outs[m][task] for m in range(len(outs)))
                         for task in range(3))
        b = text.shape[0]
        th = self.text_proj(text)
        tokens = [self.cls.expand(b, -1, -1), self.tok_text(th).reshape(b, self.text_tokens, -1)]
        tokens += [proj(x).unsqueeze(1) for proj, x in zip(self.tok_opt, xs, strict=True)]
        x = torch.cat(tokens, dim=1) + self.pos
        keep = torch.cat([torch.ones_like(mask[:, :1]).expand(b, 1 + self.text_tokens), mask], dim=1)
        bias = ((1.0 - keep) * -1e4).reshape(b, 1, 1, -1)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.heads(torch.cat([self.norm(x[:, 0]), th], dim=1))


def build(config: dict) -> FusionNet:
    return FusionNet(config["kind"], config["n_intents"], config["dims"], config["hidden"], config["d_token"],
                     config["layers"], config["heads"], config["dropout"])
