"""Searching runs: `column OP value` conditions on any runs column, on the flags a listing adds and on tags,
built as parameterised SQL (a column is checked against the schema, a value is only ever a parameter).

    OP     =  !=  <  <=  >  >=  ~ (substring, case-insensitive, on the value as text)
    column a runs column (dataset, n_attack, test_acc, created_at, ...), imported, checkpoint_missing,
           deleted, tags, note (a run's note and its pair's), or tag.<key> (a tag of the run or of its pair)

A value is read by its column's type: numbers for number columns, true/false for flags, an ISO date or
time for created_at, the text itself for text (null: the column holds no value). A tag value compares as
text, and as a number with <, <=, > and >= when the given value is one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import StoreError
from .schema import RUN_COLUMNS, column_names

VALUE_MAX = 1_000  # characters of a value to search for
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "~")
_SQL = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
TAG_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}"
_CONDITION = re.compile(rf"\s*(?P<column>tag\.{TAG_KEY}|[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>!=|<=|>=|=|<|>|~)"
                        r"(?P<value>.*)", re.DOTALL)

# The live runs: not soft-deleted (see lossland.store.manage).
LIVE = "run_id NOT IN (SELECT run_id FROM deleted_runs)"
# What a runs listing adds to the runs columns (its joins are LABEL_JOINS), and the SQL of each.
EXTRA = {"imported": "p.run_id IS NOT NULL", "checkpoint_missing": "m.run_id IS NOT NULL",
         "deleted": "d.run_id IS NOT NULL", "tags": "nullif(concat_ws(', ', tp.tags, tr.tags), '')",
         "note": "nullif(concat_ws(' | ', np.note, nr.note), '')"}
_TYPES = dict(RUN_COLUMNS) | {"imported": "BOOLEAN", "checkpoint_missing": "BOOLEAN", "deleted": "BOOLEAN",
                               "tags": "VARCHAR", "note": "VARCHAR"}
_TAGS = "(SELECT subject, string_agg(key || '=' || value, ', ' ORDER BY key) AS tags FROM tags GROUP BY subject)"
LABEL_JOINS = (" LEFT JOIN deleted_runs d USING (run_id)"
               f" LEFT JOIN {_TAGS} tr ON tr.subject = r.run_id LEFT JOIN {_TAGS} tp ON tp.subject = r.pair_id"
               " LEFT JOIN notes nr ON nr.subject = r.run_id LEFT JOIN notes np ON np.subject = r.pair_id")
EXTRA_COLUMNS = ", ".join(f"{sql} AS {name}" for name, sql in EXTRA.items())


@dataclass(frozen=True)
class Condition:
    """One search condition: a column (or tag.<key>), an operator of OPERATORS, the value as given."""

    column: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"


def columns_help() -> str:
    return f"a runs column ({', '.join(_TYPES)}) or tag.<key>"


def operators_help() -> str:
    return ", ".join(OPERATORS[:-1]) + " and ~ (substring)"


def parse(text: str) -> Condition:
    """'test_acc>=0.9' -> Condition; a StoreError naming the column or the operators when it is not one."""
    m = _CONDITION.fullmatch(text)
    if not m:
        raise StoreError(f"--where {text!r}: expected COLUMN OP VALUE with OP one of {operators_help()}, "
                         f"e.g. dataset=digits, test_acc>=0.9, tag.owner=ana, note~baseline")
    cond = Condition(m["column"], m["op"], m["value"].strip())
    if len(cond.value) > VALUE_MAX:
        raise StoreError(f"--where {cond.column}{cond.op}…: the value is {len(cond.value):,} characters, at most "
                         f"{VALUE_MAX:,}")
    _check_column(cond)
    return cond


def _check_column(cond: Condition) -> None:
    if not cond.column.startswith("tag.") and cond.column not in _TYPES:
        raise StoreError(f"--where {cond}: unknown column {cond.column!r}; use {columns_help()}, with "
                         f"{operators_help()}")


def where_sql(conditions: Iterable[Condition]) -> tuple[list[str], list]:
    """The WHERE terms (over the runs listing of rows.runs_query) and their parameters."""
    terms, params = [], []
    for cond in conditions:
        _check_column(cond)
        if cond.op not in OPERATORS:
            raise StoreError(f"--where {cond}: unknown operator {cond.op!r}; use {operators_help()}")
        term, values = _tag(cond) if cond.column.startswith("tag.") else _column(cond)
        terms.append(term)
        params += values
    return terms, params


def _expr(column: str) -> str:
    return EXTRA.get(column, f"r.{column}")


def _column(cond: Condition) -> tuple[str, list]:
    expr, kind = _expr(cond.column), _TYPES[cond.column]
    if cond.op == "~":
        return f"contains(lower(CAST({expr} AS VARCHAR)), lower(?))", [cond.value]
    if cond.value.lower() == "null":
        if cond.op not in ("=", "!="):
            raise StoreError(f"--where {cond}: null compares only with = or !=")
        return f"{expr} IS {'NOT ' if cond.op == '!=' else ''}NULL", []
    value = _typed(cond, kind)
    if cond.op == "!=":  # a run without a value differs from the value too
        return f"{expr} IS DISTINCT FROM ?", [value]
    return f"{expr} {_SQL[cond.op]} ?", [value]


def _typed(cond: Condition, kind: str) -> Any:
    raw = cond.value
    try:
        if kind in ("BIGINT", "INTEGER", "DOUBLE"):
            return float(raw) if kind == "DOUBLE" or not re.fullmatch(r"[+-]?\d+", raw) else int(raw)
        if kind == "BOOLEAN":
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[raw.lower()]
        if kind == "TIMESTAMP":
            return datetime.fromisoformat(raw)
    except (ValueError, KeyError):
        wanted = {"BOOLEAN": "true or false", "TIMESTAMP": "a date or time such as 2026-12-01 or 2026-12-01T14:30"}
        raise StoreError(f"--where {cond}: {cond.column} holds {kind.lower()} values; {raw!r} is not "
                         f"{wanted.get(kind, 'a number')}") from None
    return raw


def _tag(cond: Condition) -> tuple[str, list]:
    key = cond.column.removeprefix("tag.")
    found = "SELECT 1 FROM tags t WHERE t.subject IN (r.run_id, r.pair_id) AND t.key = ?"
    if cond.op == "~":
        return f"EXISTS ({found} AND contains(lower(t.value), lower(?)))", [key, cond.value]
    if cond.op == "!=":  # no tag of that key, or another value
        return f"NOT EXISTS ({found} AND t.value = ?)", [key, cond.value]
    if cond.op == "=":
        return f"EXISTS ({found} AND t.value = ?)", [key, cond.value]
    try:
        number = float(cond.value)
    except ValueError:
        return f"EXISTS ({found} AND t.value {_SQL[cond.op]} ?)", [key, cond.value]
    return f"EXISTS ({found} AND TRY_CAST(t.value AS DOUBLE) {_SQL[cond.op]} ?)", [key, number]


def runs_columns() -> list[str]:
    """Every column a runs listing has: the runs table's, then EXTRA's."""
    return [*column_names(RUN_COLUMNS), *EXTRA]
