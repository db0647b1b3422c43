"""Typed values from connection extras and templated operator arguments, parsed once with pydantic.

Airflow hands both over as strings as often as not (an extra typed into the UI, a Jinja-rendered argument), so each
value is parsed here into its type; a bad one is refused with a message naming where it came from and what it
must be, never silently read as ``False`` or ``0``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

T = TypeVar("T")

BLANK = ("", "none", "null")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def blank_is_none(value: Any) -> Any:
    """``None``, an empty string, or the string a template renders for None (``"None"``) mean "not set"."""
    if isinstance(value, str):
        stripped = value.strip()
        return None if stripped.lower() in BLANK else stripped
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    return value  # anything else is refused by the bool type (strictly: no "maybe", no 2)


Flag = Annotated[bool, BeforeValidator(_flag), BeforeValidator(blank_is_none)]
"""A boolean: true/false, yes/no, on/off, 1/0 (any case)."""

PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A finite number greater than zero."""

_OPTIONAL_FLAG: TypeAdapter[bool | None] = TypeAdapter(Annotated[Flag | None, BeforeValidator(blank_is_none)])
_OPTIONAL_NUMBER: TypeAdapter[float | None] = TypeAdapter(
    Annotated[float | None, Field(ge=0, allow_inf_nan=False), BeforeValidator(blank_is_none)]
)


class InvalidValue(ValueError):
    """A value that is not of its declared type; the message names it, what it must be, and what it was."""


def describe(value: Any) -> str:
    """A short ``repr`` for an error message (a value may be long; secrets are never passed here)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse(adapter: TypeAdapter[T], value: Any, *, name: str, must_be: str) -> T:
    """``value`` as ``adapter``'s type, or :class:`InvalidValue` naming it and what it must be.

    :param adapter: the type to parse into.
    :param value: the raw value (a string from a template or a form, or a native value).
    :param name: what the value is, for the message (``is_dry_run``, ``connection 'x': extra timeout``).
    :param must_be: what a valid value is, for the message.
    """
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise InvalidValue(f"{name} must be {must_be}, got {describe(value)}") from None


def flag(value: Any, *, name: str, default: bool = False) -> bool:
    """A templated boolean argument: native (``render_template_as_native_obj``) or its string form.

    :param value: the rendered value; None, blank or ``"None"`` mean ``default``.
    :param name: the argument's name, for the message.
    :param default: the value when not set.
    """
    parsed = parse(_OPTIONAL_FLAG, value, name=name, must_be="true or false")
    return default if parsed is None else parsed


def optional_positive(value: Any, *, name: str, must_be: str = "a number of at least 0") -> float | None:
    """A templated optional number: None, blank, ``"None"`` and 0 mean "not set"; a negative number is refused.

    :param value: the rendered value.
    :param name: the argument's name, for the message.
    :param must_be: what a valid value is, for the message.
    """
    return parse(_OPTIONAL_NUMBER, value, name=name, must_be=must_be) or None


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\n", ",").split(",")
    return value


def _strip_items(value: list[str]) -> list[str]:
    return [item.strip() for item in value if item.strip()]


_ID_LIST: TypeAdapter[list[str] | None] = TypeAdapter(
    Annotated[
        Annotated[list[Annotated[str, BeforeValidator(str)]], AfterValidator(_strip_items), BeforeValidator(_split)]
        | None,
        BeforeValidator(blank_is_none),
    ]
)


def id_list(value: Any, *, name: str) -> list[str]:
    """A templated list argument (``request_ids``): a list, or a comma/newline-separated string; blanks dropped.

    :param value: the rendered value; None, blank or ``"None"`` mean an empty list.
    :param name: the argument's name, for the message.
    """
    return parse(_ID_LIST, value, name=name, must_be="a list of ids or a comma-separated string") or []
