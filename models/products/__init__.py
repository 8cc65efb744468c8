"""Product recognition (Grocery Store dataset): data, augmentation, networks, training, open-set negatives.

Torch is imported by ``nets`` and ``train`` only; ``data``, ``augment`` and ``openset`` are numpy/OpenCV.
"""

from models.products.data import Catalog, Item, load_dataset, read_classes, read_list, stratified_holdout

__all__ = ["Catalog", "Item", "load_dataset", "read_classes", "read_list", "stratified_holdout"]
