"""Command-line options derived from a config dataclass, so that a config is declared once.

Each field becomes one option named after it (``learning_rate`` -> ``--learning-rate``), with the
field's type and default, and the field's docstring (the ``\"\"\"...\"\"\"`` under it) as its help.
`Opt` adjusts a field's option where the command line needs it (a short name, a parser, old
spellings kept as hidden aliases)::

    @app.command("train")
    @config_options(FeedbackConfig, {"learning_rate": Opt(aliases=("--lr",))})
    def train_command(*, fields: dict, fresh: bool = False) -> None:
        config = FeedbackConfig(**fields)

The fields' options take the place of the `fields` parameter, which receives their values (one
entry per field, parsed); the command's other parameters stay ordinary Typer options. A value a
parser refuses, or a field given under its new and its old name at once, is a one-line error
(exit 2).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import re
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ._cli import fail

_FIELD_DEFAULT: Any = object()
_CONTEXT = "cli_context"


@dataclass(frozen=True)
class Opt:
    """How one config field appears on the command line (everything optional)."""

    short: str | None = None
    """A one-letter name besides ``--field-name`` (``-o``)."""
    aliases: tuple[str, ...] = ()
    """Old spellings, accepted and hidden from ``--help``. For a flag, ``"/--name"`` is an old
    spelling of its off switch (``"/--freeze-text-encoder"``)."""
    cli_type: Any = None
    """The option's type where it differs from the field's (``str`` for a ``LO,HI`` range)."""
    default: Any = _FIELD_DEFAULT
    """The option's default where it differs from the field's (``...``: a required option)."""
    parse: Callable[[Any], Any] | None = None
    """Command-line value -> field value; raises ValueError on bad input."""
    metavar: str | None = None
    """The value's name in ``--help`` (``NAME=WEIGHT``)."""
    note: str = ""
    """Added to the field's docstring in ``--help`` (what only the command line needs to say)."""


def _docs(body: list[ast.stmt]) -> dict[str, str]:
    """The string under each annotated name of a class body, by name."""
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _class_body(source: str, name: str) -> list[ast.stmt]:
    tree = ast.parse(textwrap.dedent(source))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name).body


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` and its dataclass bases, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_docs(_class_body(inspect.getsource(klass), klass.__name__)))
    return docs


@dataclass(frozen=True)
class ConfigField:
    """A field of a config dataclass as the command line needs it."""

    name: str
    type: Any
    default: Any
    """The field's default (``...``: none)."""
    doc: str


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


@functools.cache
def config_fields(cls: type, skip: tuple[str, ...] = ()) -> tuple[ConfigField, ...]:
    """The fields of the config dataclass `cls` but `skip`."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    return tuple(ConfigField(f.name, hints[f.name], _default(f), docs.get(f.name, ""))
                 for f in dataclasses.fields(cls) if f.name not in skip)  # fmt: skip


def path_str(path: Path | None) -> str | None:
    """A path option's value for a ``str | None`` field (`Opt.parse` of such options)."""
    return str(path) if path else None


def _help(text: str, names: set[str]) -> str:
    """A docstring as option help: one line, literals unquoted, `field` names as ``--field``."""
    text = re.sub(r"`(\w+)`", lambda m: _flag(m[1]) if m[1] in names else m[0], text.replace("``", ""))
    return " ".join(text.split())


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _is_flag(tp: Any) -> bool:
    return tp is bool


def _option(name: str, tp: Any, opt: Opt, help: str) -> Any:
    """The annotation of the option of field `name`."""
    flag = _flag(name)
    decls = [f"{flag}/--no-{flag[2:]}" if _is_flag(tp) else flag]
    if opt.short:
        decls.append(opt.short)
    kw = {"metavar": opt.metavar} if opt.metavar else {}
    return Annotated[tp, typer.Option(*decls, help=help, **kw)]


def _alias(tp: Any, decl: str) -> Any:
    """The annotation of a hidden option that takes a field's value under an old name."""
    if _is_flag(tp):
        if decl.startswith("/"):
            decl = " " + decl  # an off switch only
        return Annotated[bool | None, typer.Option(decl, hidden=True)]
    optional = tp if type(None) in typing.get_args(tp) else tp | None
    return Annotated[optional, typer.Option(decl, hidden=True)]


def config_options(
    cls: type, options: dict[str, Opt] | None = None, skip: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Decorator: one option per field of the config dataclass `cls` but `skip`, in the place of
    the command's ``fields`` parameter, which gets the fields' values."""
    options = options or {}
    fields = config_fields(cls, skip)
    names = {f.name for f in fields} | set(skip)
    unknown = set(options) - names
    if unknown:
        raise ValueError(f"options for fields {cls} does not have: {sorted(unknown)}")
    none_default = {f.name for f in fields if f.default is None}

    def decorate(command: Callable) -> Callable:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        at = [p.name for p in own].index("fields")
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != "fields"]
        params, aliases = [], []  # aliases: (parameter name, field name, decl)
        for f in fields:
            opt = options.get(f.name, Opt())
            tp = opt.cli_type or f.type
            default = f.default if opt.default is _FIELD_DEFAULT else opt.default
            help = _help(" ".join(x for x in (f.doc, opt.note) if x), names)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=_option(f.name, tp, opt, help)))  # fmt: skip
            for i, decl in enumerate(opt.aliases):
                pname = f"old_{f.name}_{i}"
                aliases.append((pname, f.name, decl))
                params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None,
                                                annotation=_alias(tp, decl)))  # fmt: skip
        clash = {p.name for p in own} & {p.name for p in params}
        if clash:
            raise ValueError(f"{command.__name__} parameters clash with {cls} fields: {sorted(clash)}")

        def run(**kw: Any) -> Any:
            ctx = kw.pop(_CONTEXT)

            def given(name: str) -> bool:
                source = ctx.get_parameter_source(name)
                return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

            values = {f.name: kw.pop(f.name) for f in fields}
            for pname, field, decl in aliases:
                value = kw.pop(pname)
                if given(pname):
                    if given(field):
                        fail(f"give {_flag(field)} or {decl.lstrip('/')}, not both")
                    values[field] = value
            for name, value in values.items():
                if isinstance(value, list | tuple) and not value and name in none_default:
                    values[name] = None  # a repeatable option not given: the field's None
                opt = options.get(name)
                if opt is not None and opt.parse is not None:
                    try:
                        values[name] = opt.parse(values[name])
                    except ValueError as e:
                        fail(e)
            return command(**kw, fields=values)

        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        signature = inspect.Signature([*own[:at], *params, *own[at:], context])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate
