"""``scheme:TARGET?key=value&...`` specs for sources, parsed once and strictly.

As pyserial's URL handlers do, an unknown option or a value of the wrong kind is refused with
one line that names the options the scheme takes: ``replay:x?lop=1`` must not quietly play once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl

from .errors import ContractError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError("1 or 0 (true or false)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("a positive whole number") from None
    if value <= 0:
        raise ValueError("a positive whole number")
    return value


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("a whole number") from None


def one_of(*choices: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return text
    return check


@dataclass(frozen=True)
class Scheme:
    name: str
    needs_target: bool
    options: dict[str, Callable[[str], object]] = field(default_factory=dict)
    usage: str = ""


@dataclass(frozen=True)
class Spec:
    scheme: str
    target: str
    options: dict


def parse(text: str, schemes: dict[str, Scheme], what: str = "source") -> Spec:
    """Split and check ``text``; ContractError with one line for anything not understood."""
    name, _, rest = text.partition(":")
    target, _, query = rest.partition("?")
    scheme = schemes.get(name)
    if scheme is None:
        raise ContractError(f"unknown {what} {text!r}: use {', '.join(s.usage or s.name for s in schemes.values())}")
    if scheme.needs_target and not target:
        raise ContractError(f"{what} {name} needs a path: {scheme.usage}")
    options = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        convert = scheme.options.get(key)
        if convert is None:
            known = ", ".join(scheme.options) or "none"
            raise ContractError(f"{what} {name} has no option {key!r} (its options: {known})")
        try:
            options[key] = convert(value)
        except ValueError as e:
            raise ContractError(f"{what} {name}: {key}={value!r} must be {e}") from None
    return Spec(name, target, options)
