"""Command-line flags from typed dataclass configs, and back: the one way vlm maps flags to configs.

:func:`add_flags` adds one flag per field of a dataclass (``image_layer`` -> ``--image-layer``, or the name
given in ``names``), typed from the field's annotation, defaulting to the given instance's value: booleans
take ``--flag`` / ``--no-flag``; ``Optional`` fields also accept ``none``; ``list[...]`` fields take one or
more values. The flag's ``dest`` is ``prefix + field name``, so :func:`apply` can write the parsed values
back onto a config (nested configs use a prefix, e.g. ``lora_``). A flag a command defines by hand keeps
working with :func:`apply` as long as its ``dest`` is the field's.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any


def _kind(cls: type, name: str) -> tuple[type, bool, bool]:
    """(value type, optional, list) of a dataclass field's annotation."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    args = [a for a in args if a is not type(None)]
    lists = [a for a in args if typing.get_origin(a) is list]
    if lists:  # `int | list[int]`: take one or more values
        return typing.get_args(lists[0])[0], optional, True
    return args[0], optional, False


def _parser(kind: type, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", ""):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_flags(parser: argparse.ArgumentParser, defaults: Any, *, help: dict[str, str] | None = None,
              choices: dict[str, Any] | None = None, names: dict[str, str] | None = None,
              required: tuple[str, ...] = (), only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
              prefix: str = "") -> None:
    """One flag per field of the dataclass instance ``defaults``, in field order (only the fields in ``only``
    when given; nested dataclasses and ``skip`` excepted)."""
    help, choices, names = help or {}, choices or {}, names or {}
    cls = type(defaults)
    for f in fields(cls):
        value = getattr(defaults, f.name)
        if f.name in skip or is_dataclass(value) or (only is not None and f.name not in only):
            continue
        kind, optional, many = _kind(cls, f.name)
        flag = "--" + (prefix + names.get(f.name, f.name)).replace("_", "-")
        text = help.get(f.name, f.name.replace("_", " "))
        shown = f.name in required or "default" in text  # the help already says what happens by default
        kw: dict[str, Any] = {"dest": prefix + f.name, "help": text if shown else f"{text} (default: {value})"}
        if f.name in required:
            kw["required"] = True
        else:
            kw["default"] = value
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        parser.add_argument(flag, type=_parser(kind, optional), choices=choices.get(f.name),
                            nargs="+" if many else None, **kw)


def apply(args: argparse.Namespace, config: Any, prefix: str = "") -> Any:
    """Write every parsed flag whose ``dest`` is ``prefix + field name`` onto ``config``; returns it.
    A list flag given one value sets the single value (``--layer 10`` -> ``10``, not ``[10]``)."""
    for f in fields(type(config)):
        dest = prefix + f.name
        if not hasattr(args, dest):
            continue
        value = getattr(args, dest)
        if isinstance(value, list) and len(value) == 1 and typing.get_origin(typing.get_type_hints(type(config))[f.name]) is not list:
            value = value[0]
        setattr(config, f.name, value)
    return config
