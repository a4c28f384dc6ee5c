"""What the command line's arguments hold: a config from --config FILE or --preset with --set overrides,
and the KEY=VALUE items of --set, --grid and --where. A config file is read within a size limit and must
be UTF-8 JSON of bounded depth; every bad input is a ConfigError naming the file or the flag."""

from __future__ import annotations

import argparse
import json
import re
from itertools import accumulate
from pathlib import Path

from .config import ConfigError, ExperimentConfig, preset

MAX_CONFIG_BYTES = 1024**2  # a config is a few KB; /dev/zero or a wrong file must not fill the memory
MAX_JSON_DEPTH = 16  # a config nests 3 deep (object, section, list)


def load_config(args: argparse.Namespace) -> ExperimentConfig:
    """--config FILE (JSON) or --preset NAME, then --set section.field=value overrides."""
    if getattr(args, "config", None):
        path = Path(args.config)
        text = config_text(path)
        json_depth(text, f"--config {path}")
        try:
            cfg = ExperimentConfig.from_json(text)
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {e}") from None
    else:
        cfg = preset(args.preset)
    changes = {key: json_value(raw, f"--set {key}") for key, raw in assignments(
        getattr(args, "set", None), "--set", "section.field=value, e.g. train.lr=0.01").items()}
    if getattr(args, "device", None):
        changes["train.device"] = args.device
    return cfg.with_changes(**changes) if changes else cfg


def assignments(items: list[str] | None, flag: str, form: str) -> dict[str, str]:
    """`KEY=VALUE` command-line items -> {KEY: raw VALUE}; a malformed item names the flag and the form."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected {form}")
        out[key] = raw
    return out


def config_text(path: Path) -> str:
    """The text of a --config file: at most MAX_CONFIG_BYTES of UTF-8; a ConfigError naming the file otherwise."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: a directory, not a JSON file") from None
    except OSError as e:
        raise ConfigError(f"--config {path}: can't be read ({e.strerror or e})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path}: larger than {MAX_CONFIG_BYTES // 1024**2} MiB; a config is a few KB "
                          f"(write one with `python -m lossland config > FILE`)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x}); a config is "
                          f"JSON") from None


_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str, what: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped); a ConfigError naming `what` past
    MAX_JSON_DEPTH, before the parser could run out of stack."""
    bare = _JSON_STRINGS.sub('""', text)
    depth = max(accumulate(1 if c in "[{" else -1 for c in bare if c in "[]{}"), default=0)
    if depth > MAX_JSON_DEPTH:
        raise ConfigError(f"{what}: JSON nested {depth:,} levels deep, at most {MAX_JSON_DEPTH}")
    return depth


def json_value(raw: str, what: str = "value"):
    """A JSON value where the text is one (0.01, [64,64], true), else the text itself (relu); nested at
    most MAX_JSON_DEPTH deep (a ConfigError naming `what` otherwise)."""
    json_depth(raw, what)
    try:
        return json.loads(raw)
    except ValueError:  # not JSON, or an integer past Python's digit limit: the text itself
        return raw


def split_values(raw: str) -> list[str]:
    """Split 'a,b,[1,2]' at top-level commas, so list values like [64,64] survive."""
    parts, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]
