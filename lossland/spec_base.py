"""What every analysis spec has (lossland.specs holds the specs): its kind, its validated settings, their JSON and
the analysis id they hash to with the run or pair they look at."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import Any, ClassVar

from .config import RESULT_FORMAT_VERSION, ConfigError, _choice, _int, _shown

SEED_MAX = 2**31 - 1
MAX_RADII = 64


class Spec:
    """What every spec has: its kind (the store's `analyses.kind`), its settings and its analysis id."""

    kind: ClassVar[str]
    title: ClassVar[str]  # what the dashboard calls it ("escape trials")
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # fields with a fixed set of values

    def __post_init__(self) -> None:
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self.validate()
        for f in fields(self):  # 1 and 1.0 are one setting: one JSON text, one id
            value = getattr(self, f.name)
            if f.type == "float":
                object.__setattr__(self, f.name, float(value))
            elif f.type == "tuple[float, ...]":
                object.__setattr__(self, f.name, tuple(float(v) for v in value))

    def validate(self) -> None:
        for name, allowed in self.choices.items():
            _choice(self.field(name), getattr(self, name), allowed)

    def field(self, name: str) -> str:
        return f"{self.kind}.{name}"

    # --- what it costs (the operator's caps, limits.check_analysis) ----------------------------------
    def grid_points(self) -> int:
        return 0

    def trials(self) -> int:
        return 0

    # --- serialisation -----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.settings())

    @classmethod
    def from_settings(cls, settings: Any) -> Spec:
        if not isinstance(settings, dict):
            raise ConfigError(f"{cls.kind} settings must be an object of fields, got {type(settings).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(settings) - known))
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(f'{cls.kind}.{u[:40]}' for u in unknown[:5])}; "
                              f"allowed: {', '.join(sorted(known)) or 'none'}")
        return cls(**settings)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        try:
            settings = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise ConfigError(f"{cls.kind} settings are not valid JSON: {_shown(str(e), 200)}") from None
        return cls.from_settings(settings)

    def analysis_id(self, subject: str) -> str:
        """16 hex digits of sha256 over (result format, kind, the pair or run it looks at, settings)."""
        payload = json.dumps({"v": RESULT_FORMAT_VERSION, "kind": self.kind, "subject": subject,
                              "settings": self.settings()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def describe(self, skip: tuple[str, ...] = ()) -> str:
        """The settings (but those in `skip`) in one line, for a picker."""
        return " · ".join(f"{k} {_text(v)}" for k, v in self.settings().items() if k not in skip) or "no settings"


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _seed(spec: Spec, name: str) -> None:
    _int(spec.field(name), getattr(spec, name), 0, SEED_MAX)
