"""What a config may say about a researcher's own model or dataset, checked without importing anything.

A section (`data` or `model`) with name "custom" names a factory by import path, `package.module:function`,
with keyword arguments as plain JSON data, and the sha256 of the factory's module source (filled in by
`lossland.factories.pinned`, so the run id covers the code). Nothing here imports the named module: a
config read from a store or a bundle is checked and hashed without running anyone's code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

CUSTOM = "custom"  # data.name / model.name of a dataset or model built by a factory
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
MAX_KWARGS_CHARS = 10_000  # factory_kwargs as JSON: a few knobs, not data
MAX_DEPTH = 8
PLAIN = "plain JSON data: null, true/false, finite numbers, text, lists and objects with text keys"

Problem = tuple[str, Any, str]  # (field, value, what is allowed)


def plain(value: Any, path: str, depth: int = 0) -> tuple[Any, Problem | None]:
    """value as plain JSON data (tuples become lists), or the problem with it."""
    if depth > MAX_DEPTH:
        return None, (path, value, f"JSON data nested at most {MAX_DEPTH} deep")
    if value is None or isinstance(value, (bool, str)):
        return value, None
    if isinstance(value, (int, float)):
        finite = isinstance(value, int) or math.isfinite(value)
        return (value, None) if finite else (None, (path, value, PLAIN))
    if isinstance(value, (list, tuple, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            return None, (path, value, PLAIN)
        out = {}
        for key, item in items:
            out[key], problem = plain(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]", depth + 1)
            if problem:
                return None, problem
        return (out if isinstance(value, dict) else list(out.values())), None
    return None, (path, value, PLAIN)


def problem(section: Any, p: str) -> tuple[Any, Problem | None]:
    """(the section's factory_kwargs as plain data, the first problem of its factory fields or None)."""
    f, kwargs, sha = section.factory, section.factory_kwargs, section.factory_sha256
    if (section.name == CUSTOM) != (f is not None):
        if f is None:
            return kwargs, (f"{p}.factory", f, f"an import path 'package.module:function' when {p}.name is {CUSTOM!r}")
        return kwargs, (f"{p}.name", section.name, f"{CUSTOM!r} when {p}.factory is set (or {p}.factory null)")
    if f is not None and (not isinstance(f, str) or len(f) > 300 or not IMPORT_PATH.fullmatch(f)):
        return kwargs, (f"{p}.factory", f, "an import path 'package.module:function': a module importable here, a "
                                           "colon, the name of a callable in it")
    if not isinstance(kwargs, dict):
        return kwargs, (f"{p}.factory_kwargs", kwargs, "an object of keyword arguments (plain JSON data)")
    kwargs, found = plain(kwargs, f"{p}.factory_kwargs")
    if found:
        return section.factory_kwargs, found
    if len(json.dumps(kwargs)) > MAX_KWARGS_CHARS:
        return kwargs, (f"{p}.factory_kwargs", kwargs, f"at most {MAX_KWARGS_CHARS:,} characters of JSON")
    if f is None and (kwargs or sha is not None):
        return kwargs, (f"{p}.factory_kwargs" if kwargs else f"{p}.factory_sha256", kwargs or sha,
                        f"empty without {p}.factory")
    if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha)):
        return kwargs, (f"{p}.factory_sha256", sha, "64 hex digits (set by lossland.factories.pinned), or null")
    return kwargs, None


def check(section: Any, p: str, fail: Callable[[str, Any, str], None]) -> None:
    """fail(field, value, allowed) on the first problem of the section's factory fields; else its
    factory_kwargs become plain JSON data (lists, not tuples)."""
    kwargs, found = problem(section, p)
    if found:
        fail(*found)
    object.__setattr__(section, "factory_kwargs", kwargs)


def unloaded(data: Any, what: str) -> str:
    return f"data.name = {CUSTOM!r}: the {what} of {data.factory} is known once its data are loaded"


def without_unused(config: dict) -> dict:
    """A config's plain data with the factory fields left out of the sections that name no factory."""
    for name in ("data", "model"):
        if config[name].get("factory") is None:
            config[name] = {k: v for k, v in config[name].items() if not k.startswith("factory")}
    return config


def unpinned(sections: dict[str, Any]) -> str | None:
    """Why a config can't be hashed yet: a factory whose source hash is not set (None when all are)."""
    for name, section in sections.items():
        if section.factory is not None and section.factory_sha256 is None:
            return (f"{name}.factory_sha256 is not set, so the run id would not cover the source of {section.factory}:"
                    f" lossland.factories.pinned(cfg) sets it (run, sweep and the dashboard call it)")
    return None


def describe(section: Any) -> str:
    """How a section is named in tables: a factory by its import path, else by its name."""
    return section.factory if section.name == CUSTOM and section.factory else section.name
