"""Where the kiosk finds its data files.

The repository's ``data/`` folder sits next to the ``runtime`` package (an editable install and a plain
checkout both resolve it). Deployments that keep data elsewhere (a read-only image, a mounted volume) point
``STORECLERK_DATA`` at it instead.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "STORECLERK_DATA"


def data_dir() -> Path:
    """The data directory: ``$STORECLERK_DATA`` if set, else ``<repo>/data``."""
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "data"


def default_bundle_dir() -> Path:
    """The kiosk's embedded default bundle, committed with the code (``models/bundles/kiosk``)."""
    return Path(__file__).resolve().parent.parent / "models" / "bundles" / "kiosk"
