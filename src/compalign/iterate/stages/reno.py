"""Stage 7, ``reno``: the new base (or, when it is multi-step, `reno_model`; or the base at
`reno_steps` differentiable steps) evaluated without and with ReNO, the aspect reward models as
rewards (``iter_<k>/reno/plain.json``, ``reno.json``)."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from ...gallery.generate import default_model_name
from ...generators import create_generator
from ...io import atomic_write_json
from ...noise_optimization.reno import optimize_noise
from ...rewards.objective import load_rewards
from ..config import base_name
from ..eval_store import cached_eval, eval_key, evaluate_model
from ..state import IterateError, plain
from ..workspace import Workspace, abs_spec


def settings(ws: Workspace, k: int) -> dict:
    c = ws.config
    if not c.reno:
        return {"enabled": False}
    return plain(
        {
            "enabled": True,
            "model": c.reno_model if c.reno_steps is None else "the new base",
            **({} if c.reno_steps is None else {"steps": c.reno_steps}),
            **c.recorded("noise_optimization"),
            "per_category": c.reno_prompts_per_category(),
            "seeds": c.eval_seeds,
            "categories": c.evaluation_categories(),
            "weights": {a: c.reno_weight(a) for a in c.aspects},
            **c.changed("noise_optimization"),
        }
    )


def _generator(ws: Workspace, k: int):
    """(name, spec, generator, note) of the generator ReNO runs on: the new base when it is
    one/two-step or `reno_steps` is set, else `reno_model`."""

    c = ws.config
    base = ws.base_dir(k)
    if c.reno_steps is not None:
        gen = create_generator(str(base), device=c.device, steps=c.reno_steps)
        note = (
            f"ReNO runs on the new base {base_name(k)} itself at {c.reno_steps} DDIM steps (the gradient "
            f"flows through every step); the plain row is {base_name(k)} at {c.reno_steps} steps too."
        )
        return base_name(k), str(base.resolve()), gen, note
    base_gen = create_generator(str(base), device=c.device)
    if base_gen.differentiable:
        note = f"ReNO runs on the new base {base_name(k)} itself (a one/two-step generator)."
        return base_name(k), str(base.resolve()), base_gen, note
    steps = base_gen.settings().get("num_inference_steps")
    del base_gen
    name, spec = default_model_name(c.reno_model), abs_spec(c.reno_model)
    gen = create_generator(spec, device=c.device)
    if not gen.differentiable:
        raise IterateError(f"--reno-model {c.reno_model} is not a one/two-step generator")
    note = (
        f"The new base {base_name(k)} is multi-step ({steps} steps), and ReNO needs a one/two-step "
        f"generator: ReNO runs on {name} ({c.reno_model}), with iteration {k}'s aspect reward "
        f"models as rewards; the new base itself is reported without ReNO."
    )
    return name, spec, gen, note


def run(ws: Workspace, k: int) -> dict:
    c = ws.config
    if not c.reno:
        ws.log("  off (--no-reno)")
        return {"enabled": False}
    name, spec, gen, note = _generator(ws, k)
    ws.log(f"  {note}")
    per_cat = c.reno_prompts_per_category()
    out_dir = ws.iter_dir(k) / "reno"
    key = eval_key(ws, spec, per_cat, steps=c.reno_steps)
    out: dict = {"enabled": True, "generator": name, "spec": key["spec"], "note": note}

    # without ReNO (the plain generator; shared with the evaluate stage when it is the same)
    f_plain = out_dir / "plain.json"
    hit = cached_eval(ws, k, key)
    if f_plain.is_file() and json.loads(f_plain.read_text()).get("key") == key:
        without = json.loads(f_plain.read_text())["result"]
    elif hit is not None:
        without = hit[0]
        atomic_write_json(f_plain, {"key": key, "result": without, "copied_from": ws.rel(hit[1])})
    else:
        ws.log(f"  {name} without ReNO")
        without = evaluate_model(ws, name, spec, per_cat, gen=gen)
        atomic_write_json(f_plain, {"key": key, "result": without})
    # with ReNO
    rewards_out = ws.state.outputs(k, "rewards")
    reno_key = {
        **key,
        "reno": {
            **c.recorded("noise_optimization"),
            **c.changed("noise_optimization"),
            "rewards": {a: {"model": rewards_out[a]["model"], "weight": c.reno_weight(a)} for a in c.aspects},
        },
    }
    f_reno = out_dir / "reno.json"
    if f_reno.is_file() and json.loads(f_reno.read_text()).get("key") == plain(reno_key):
        with_reno = json.loads(f_reno.read_text())["result"]
    else:
        with_reno = _with_reno(ws, k, name, spec, gen, per_cat)
        atomic_write_json(f_reno, {"key": plain(reno_key), "result": with_reno})
    ws.log(
        f"  {name}: {100 * without['overall']:.1f}% without ReNO -> "
        f"{100 * with_reno['overall']:.1f}% with ReNO"
    )
    for label, res, f in (("plain", without, f_plain), ("reno", with_reno, f_reno)):
        out[label] = {
            "file": ws.rel(f),
            "overall": res["overall"],
            "aspects": res["aspects"],
            "categories": {cat: v["accuracy"] for cat, v in res["categories"].items()},
        }
    out["reward_loss"] = with_reno.get("reward_loss")
    return out


def _with_reno(ws: Workspace, k: int, name: str, spec: str, gen, per_cat: int) -> dict:
    """The evaluation of `gen` with ReNO on every batch (and the mean weighted reward loss)."""

    c = ws.config
    weighted = load_rewards(c.objective({a: ws.reward_model(k, a) for a in c.aspects}, reno=True), gen.device)
    rcfg = replace(c.noise_optimization, progress=False)
    losses = {"initial": [], "best": []}

    def generate(prompts, seeds):
        torch.manual_seed(0)
        res = optimize_noise(gen, prompts, weighted, seeds, rcfg)
        losses["initial"] += res.initial_loss
        losses["best"] += res.best_loss
        return res.best_images

    n_img = len(c.evaluation_categories()) * per_cat * len(c.eval_seeds)
    ws.log(f"  {name} with ReNO: {n_img} images x {rcfg.iterations} iterations")
    res = evaluate_model(ws, f"{name}+ReNO", spec, per_cat, generate=generate, gen=gen)
    res["reward_loss"] = {
        "initial_mean": sum(losses["initial"]) / max(1, len(losses["initial"])),
        "best_mean": sum(losses["best"]) / max(1, len(losses["best"])),
    }
    return res
