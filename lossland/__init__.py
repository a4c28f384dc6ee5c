"""lossland: why does this minimum generalize and that one not? (after Wu, Zhu & E, arXiv 1706.10239)"""

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .config import PRESETS, ConfigError, ExperimentConfig, preset  # noqa: E402

__all__ = ["Checkpoint", "ConfigError", "ExperimentConfig", "PRESETS", "load_checkpoint", "preset",
           "save_checkpoint", "__version__"]
