"""Sync definitions: YAML files validated by :class:`SyncDefinition` (see docs/definitions.md).

The definitions shipped with ticketsync live in this package (``*.yaml``); reading them is the only I/O done when
they are loaded, and an invalid file raises :class:`DefinitionError` naming the file, the field and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ticketsync.definitions.model import CorrelationSpec, FieldSpec, KeySpec, SourceSpec, SyncDefinition

__all__ = [
    "CorrelationSpec",
    "DefinitionError",
    "FieldSpec",
    "KeySpec",
    "SourceSpec",
    "SyncDefinition",
    "load_definition",
    "load_definitions",
    "load_named_definitions",
    "packaged_definition",
    "packaged_definition_files",
    "packaged_definitions",
    "parse_definition",
]


class DefinitionError(ValueError):
    """A definition file that cannot be used; the message names the file, the field and the rule."""


def _where(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _describe(name: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        context = error.get("ctx") or {}
        message = str(context["error"]) if "error" in context else str(error["msg"])
        problems.append(f"{name}: {_where(error['loc'])}: {message}")
    return "invalid sync definition: " + "; ".join(problems)


def parse_definition(text: str, name: str) -> SyncDefinition:
    """A definition from YAML text; ``name`` (the file) is named in every error."""
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"invalid sync definition: {name}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"invalid sync definition: {name}: (top level): must be a mapping of settings")
    try:
        return SyncDefinition.model_validate(data)
    except ValidationError as exc:
        raise DefinitionError(_describe(name, exc)) from exc


def load_definition(path: Path | Traversable) -> SyncDefinition:
    return parse_definition(path.read_text(encoding="utf-8"), str(path))


def load_named_definitions(
    paths: Iterable[Path | Traversable], *, by_name: bool = True
) -> list[tuple[str, SyncDefinition]]:
    """(file, definition) of the given files, in name order (``by_name``) or as given; two files with one dag_id are
    an error naming both, the later one first."""
    found: dict[str, tuple[str, SyncDefinition]] = {}
    for path in sorted(paths, key=lambda p: p.name) if by_name else paths:
        definition = load_definition(path)
        if definition.dag_id in found:
            raise DefinitionError(
                f"invalid sync definition: {path}: dag_id: {definition.dag_id!r} is also the dag_id of "
                f"{found[definition.dag_id][0]}"
            )
        found[definition.dag_id] = (str(path), definition)
    return list(found.values())


def load_definitions(paths: Iterable[Path | Traversable]) -> list[SyncDefinition]:
    """The definitions of the given files, in name order; two files with one dag_id are an error naming both."""
    return [definition for _, definition in load_named_definitions(paths)]


def packaged_definition_files() -> list[Traversable]:
    """The definition files shipped in this package."""
    return [item for item in resources.files(__name__).iterdir() if item.name.endswith(".yaml")]


def packaged_definitions() -> list[SyncDefinition]:
    """The definitions shipped in this package."""
    return load_definitions(packaged_definition_files())


def packaged_definition(target_table: str) -> SyncDefinition:
    """The shipped definition of one target table."""
    for definition in packaged_definitions():
        if definition.target_table == target_table:
            return definition
    raise KeyError(target_table)
