"""export"""

# Public names are re-exported lazily, so ``selfsup-export`` can report flag mistakes without
# first importing TensorFlow.

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_encoder": "selfsup.export.saved_model",
    "HubEncoderModule": "selfsup.export.saved_model",
    "HubEncoderLayer": "selfsup.export.keras_layer",
    "load_module": "selfsup.export.keras_layer",
    "VersionExistsError": "selfsup.export.layout",
    "export_trained_encoder": "selfsup.export.export_main",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
