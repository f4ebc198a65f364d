"""Command-line options derived from a config dataclass, so that a config is declared once.

Each field becomes one option named after it (``learning_rate`` -> ``--learning-rate``), with the
field's type and default, and the field's docstring (the ``\"\"\"...\"\"\"`` under it) as its help.
`Opt` adjusts a field's option where the command line needs it (a short name, a parser, old
spellings kept as hidden aliases)::

    @app.command("train")
    @config_options(FeedbackConfig, {"learning_rate": Opt(aliases=("--lr",))})
    def train_command(fresh: bool = False, *, fields: dict) -> None:
        config = FeedbackConfig(**fields)

The command receives the fields' values in `fields` (one entry per field, parsed); its own
parameters stay ordinary Typer options. A value a parser refuses, or a field given under its new
and its old name at once, is a one-line error (exit 2).
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
    note: str = ""
    """Added to the field's docstring in ``--help`` (what only the command line needs to say)."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` and its dataclass bases, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
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


def _help(text: str, names: set[str]) -> str:
    """A docstring as option help: one line, literals unquoted, `field` names as ``--field``."""
    text = re.sub(r"`(\w+)`", lambda m: _flag(m[1]) if m[1] in names else m[0], text.replace("``", ""))
    return " ".join(text.split())


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _is_flag(tp: Any) -> bool:
    return tp is bool


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


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
    """Decorator: one option per field of the config dataclass `cls` (but `skip`), the command's
    own parameters after them; the command gets the fields' values as ``fields``."""
    options = options or {}
    hints = typing.get_type_hints(cls)
    unknown = set(options) - set(hints)
    if unknown:
        raise ValueError(f"options for fields {cls.__name__} does not have: {sorted(unknown)}")
    docs = field_docs(cls)

    def decorate(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "fields"]
        params, aliases = [], []  # aliases: (parameter name, field name, decl)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            opt = options.get(f.name, Opt())
            tp = opt.cli_type or hints[f.name]
            default = _field_default(f) if opt.default is _FIELD_DEFAULT else opt.default
            help = _help(" ".join(x for x in (docs.get(f.name, ""), opt.note) if x), set(hints))
            annotation = _option(f.name, tp, opt, help)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))  # fmt: skip
            for i, decl in enumerate(opt.aliases):
                pname = f"old_{f.name}_{i}"
                aliases.append((pname, f.name, decl))
                params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None,
                                                annotation=_alias(tp, decl)))  # fmt: skip
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        names = {p.name for p in own}
        clash = names & {p.name for p in params}
        if clash:
            raise ValueError(
                f"{command.__name__} parameters clash with {cls.__name__} fields: {sorted(clash)}"
            )

        def run(**kw: Any) -> Any:
            ctx = kw.pop(_CONTEXT)

            def given(name: str) -> bool:
                source = ctx.get_parameter_source(name)
                return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

            fields = {p.name: kw.pop(p.name) for p in params if not p.name.startswith("old_")}
            for pname, field, decl in aliases:
                value = kw.pop(pname)
                if given(pname):
                    if given(field):
                        fail(f"give {_flag(field)} or {decl.lstrip('/')}, not both")
                    fields[field] = value
            for name, value in fields.items():
                if isinstance(value, list | tuple) and not value and _field_default_of(cls, name) is None:
                    fields[name] = None  # a repeatable option not given: the field's None
                opt = options.get(name)
                if opt is not None and opt.parse is not None:
                    try:
                        fields[name] = opt.parse(fields[name])
                    except ValueError as e:
                        fail(e)
            return command(**kw, fields=fields)

        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        signature = inspect.Signature([*params, *own, context])
        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return run

    return decorate


def _field_default_of(cls: type, name: str) -> Any:
    return _field_default(next(f for f in dataclasses.fields(cls) if f.name == name))
