"""``compalign iterate``: IterComp's loop end to end (gallery -> rank -> pairs -> reward models ->
feedback training -> evaluation with and without ReNO -> report), resumable stage by stage.

Exit codes: 0 done (or stopped by ``--stop-after``); 2 bad input or a conflict with the work
folder's state (one line on stderr); 3 waiting for people's rankings (``--rank people``: the
message says what to serve); 1 a trainer was stopped by a signal (the same command resumes).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from compalign._cli import GreedyListCommand
from compalign._cli import fail as _fail

from ..config_cli import Opt, config_fields, config_options, path_str
from ..feedback.cli import parse_stop_range
from ..feedback.config import DEFAULT_STOP_RANGE, FeedbackConfig, RaftConfig
from ..noise_optimization.reno import ReNOConfig
from ..rewards.composition.config import RewardTrainConfig
from ..rewards.objective import parse_weights
from .config import DEFAULTS, ESTIMATE, NESTED, STAGES, IterateConfig
from .state import IterateError, IterateInterrupted

WAITING = 3


class IterateCommand(GreedyListCommand):
    """List options take several values after one flag (``--gallery-models a b c``), values running
    to the next ``-`` token."""

    greedy = ("--gallery-models", "--aspects", "--eval-seeds", "--eval-categories", "--reward-weights")


def _weights(texts: list[str] | None) -> dict[str, float]:
    """``ASPECT=WEIGHT`` texts as ``{aspect: weight}`` (the reward objective's parser)."""
    try:
        return parse_weights(texts, "reward weight", need_value=True)
    except ValueError as e:
        raise ValueError(f"--reward-weights: {e}") from None


FIELD_OPTIONS = {
    "workdir": Opt(short="-w", cli_type=Path | None, default=None, parse=path_str, note="Required."),
    "iterations": Opt(short="-k"),
    "gallery_models": Opt(note="Several values after one flag."),
    "aspects": Opt(note="Several values after one flag."),
    "pairs_decided_only": Opt(aliases=("/--pairs-with-tie-breaks",)),
    "reward_weights": Opt(
        cli_type=list[str] | None, default=None, metavar="ASPECT=WEIGHT", parse=_weights,
        note="Several values after one flag.",
    ),
    "eval_categories": Opt(note="Several values after one flag."),
    "eval_seeds": Opt(note="Several values after one flag."),
    "num_threads": Opt(aliases=("--threads",)),
    "force_stages": Opt(aliases=("--force-stage",), note=f"Repeatable; stages: {', '.join(STAGES)}."),
}  # fmt: skip
"""How `IterateConfig`'s own fields appear on the command line (the rest: `config_options`'
defaults); the aliases are the options' earlier names."""

NESTED_OPTIONS = {
    "reward_training": ("reward", {
        "backbone": Opt(),
        "epochs": Opt(),
        "batch_size": Opt(),
        "learning_rate": Opt(aliases=("--reward-lr",)),
        "head_learning_rate": Opt(aliases=("--reward-head-lr",)),
        "freeze_ratio": Opt(),
    }),
    "feedback_training": ("feedback", {
        "max_steps": Opt(aliases=("--feedback-steps",)),
        "batch_size": Opt(),
        "learning_rate": Opt(aliases=("--feedback-lr",)),
        "stop_range": Opt(
            cli_type=str, default=",".join(map(str, DEFAULT_STOP_RANGE)), metavar="LO,HI",
            parse=lambda text: parse_stop_range(text, "--feedback-stop-range"),
        ),
        "reg_type": Opt(aliases=("--reg-type",)),
        "reg_weight": Opt(aliases=("--reg-weight",)),
        "pool_dir": Opt(aliases=("--pool-dir",), cli_type=Path | None, parse=path_str),
        "pool_per_category": Opt(aliases=("--pool-per-category",)),
        "checkpoint_every": Opt(),
    }),
    "noise_optimization": ("reno", {"iterations": Opt(), "lr": Opt()}),
    "raft_training": ("raft", {
        "max_steps": Opt(),
        "batch_size": Opt(),
        "learning_rate": Opt(),
        "top_k": Opt(),
        "samples_per_prompt": Opt(),
        "reg_batch_size": Opt(),
        "train_text_encoder": Opt(),
    }),
}  # fmt: skip
"""The fields of the nested trainer configs on the command line: nested config -> (prefix, {field:
how it appears}). Field ``f`` of a config is ``--PREFIX-f`` (``learning_rate`` of
``feedback_training``: ``--feedback-learning-rate``); the aliases are the options' earlier names."""

_UNSET = Opt().default  # an `Opt` that keeps the field's default
_KEYWORD = inspect.Parameter.KEYWORD_ONLY

CONFIG_SOURCES = {
    "reward_training": RewardTrainConfig,
    "feedback_training": FeedbackConfig,
    "noise_optimization": ReNOConfig,
    "raft_training": RaftConfig,
}
"""The nested configs, whose fields become options."""


def _help(text: str, prefix: str, options: dict) -> str:
    """A nested field's docstring as option help: one line, literals unquoted, the config's exposed
    `field` names as ``--PREFIX-field``."""
    text = re.sub(r"`(\w+)`", lambda m: _flag(prefix, m[1]) if m[1] in options else m[0], text)
    return " ".join(text.replace("``", "").split())


def _flag(prefix: str, name: str) -> str:
    return f"--{prefix}-{name.replace('_', '-')}"


def nested_options(command: Callable) -> Callable:
    """Decorator: the `NESTED_OPTIONS` as options of `command` (defaults: iterate's `DEFAULTS`),
    whose ``fields`` parameter then also gets ``{nested config: {field: value}}``. Goes under
    `config_options`."""
    params, taken = [], []  # taken: (parameter, nested config, field, Opt, default, old spellings)
    for name, (prefix, options) in NESTED_OPTIONS.items():
        known = {f.name: f for f in config_fields(CONFIG_SOURCES[name])}
        for fname, opt in options.items():
            f, pname = known[fname], f"{prefix}_{fname}"  # the option: --PREFIX-FIELD
            tp = opt.cli_type or f.type
            default = DEFAULTS[name].get(fname, f.default) if opt.default is _UNSET else opt.default
            help = _help(" ".join(x for x in (f.doc, opt.note, f"({name}.{fname})") if x), prefix, options)
            kw = {"metavar": opt.metavar} if opt.metavar else {}
            option = Annotated[tp, typer.Option(_flag(prefix, fname), help=help, **kw)]
            params.append(inspect.Parameter(pname, _KEYWORD, default=default, annotation=option))
            olds = [(f"old_{pname}_{i}", decl) for i, decl in enumerate(opt.aliases)]
            for old, decl in olds:  # hidden, None unless given
                option = Annotated[tp | None, typer.Option(decl, hidden=True)]
                params.append(inspect.Parameter(old, _KEYWORD, default=None, annotation=option))
            taken.append((pname, name, fname, opt, default, olds))
    own = list(inspect.signature(command, eval_str=True).parameters.values())

    def run(**kw: Any) -> Any:
        fields = kw.pop("fields")
        for pname, name, fname, opt, default, olds in taken:
            value = kw.pop(pname)
            for old, decl in olds:
                old_value = kw.pop(old)
                if old_value is not None:  # both spellings: an error unless the new one kept its default
                    if value != default:
                        _fail(f"give --{pname.replace('_', '-')} or {decl}, not both")
                    value = old_value
            try:
                fields.setdefault(name, {})[fname] = opt.parse(value) if opt.parse else value
            except ValueError as e:
                _fail(str(e))
        return command(**kw, fields=fields)

    run.__name__, run.__qualname__, run.__doc__ = command.__name__, command.__qualname__, command.__doc__
    at = [p.name for p in own].index("fields") + 1
    run.__signature__ = inspect.Signature([*own[:at], *params, *own[at:]])  # type: ignore[attr-defined]
    return run


@config_options(IterateConfig, FIELD_OPTIONS, skip=(*NESTED, "progress"))
@nested_options
def iterate_command(
    *,
    fields: dict,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bars (default: on a terminal).")
    ] = None,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Print the time estimate of one iteration and exit.")
    ] = False,
) -> None:
    """Run IterComp's loop for K iterations in WORKDIR (resumes; finished stages are skipped).

    Every option is a field of the loop's config; the trainers' fields carry their config's
    prefix: --reward-* (reward_training), --feedback-* (feedback_training), --reno-*
    (noise_optimization)."""
    if estimate:
        print(ESTIMATE)
        return
    if fields["workdir"] is None:
        _fail("give --workdir DIR (the work folder: created, or resumed when it holds a state.json)")
    from .run import run_iterate  # lazy: loads accelerate, diffusers, transformers

    try:
        config = IterateConfig(**fields, progress=sys.stderr.isatty() if progress is None else progress)
    except ValueError as e:  # a bad option value (the message names it)
        _fail(str(e))
    try:
        outcome = run_iterate(config)
    except IterateError as e:
        _fail(str(e))
    except IterateInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if outcome.status == "waiting":
        print(outcome.message, file=sys.stderr)
        raise typer.Exit(WAITING)
    print(outcome.message)


def register(app: typer.Typer) -> None:
    app.command("iterate", cls=IterateCommand)(iterate_command)
