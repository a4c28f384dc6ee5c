"""lossland: why does this minimum generalize and that one not? (after Wu, Zhu & E, arXiv 1706.10239)

The public names (run a pair, query the store, measure a model's spectrum, the analysis specs; see the
README's "From Python") load on first use (PEP 562), so `import lossland.store` or `lossland.config`
does not pay torch's start-up cost (~2 s) for a command that only reads the store.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {"analyze": "external", "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
            "save_checkpoint": "checkpoint", "PRESETS": "config", "ConfigError": "config",
            "ExperimentConfig": "config", "preset": "config",
            "run_pair": "experiments", "sweep": "experiments", "Store": "store", "spectrum": "curvature",
            "SpectrumResult": "curvature", "InterpolationSpec": "specs", "SliceSpec": "specs", "SurfaceSpec": "specs",
            "EscapeSpec": "specs", "RandomInitSpec": "specs", "RadiusSpec": "specs", "TrajectorySpec": "specs",
            "EscapeSearchSpec": "specs"}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lossland' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
