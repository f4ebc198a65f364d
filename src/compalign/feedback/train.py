"""Multi-reward feedback learning (ReFL, as IterComp trains its base model), for world models and
Stable-Diffusion-like diffusers pipelines.

`train_feedback(config)` runs (or resumes) a run in ``config.run_dir``::

    run_dir/
      config.json              the full FeedbackConfig
      log.jsonl                per step: loss, reward loss, mean score of each reward, regulariser,
                               stop indices, learning rate, gradient norm, throughput
      curves.png               rewards and regulariser per step
      checkpoints/step_0000050/state.pt   resumable state (trained weights or LoRA adapters,
                               optimizer, EMA, step, RNG states, wall time, sessions)
      final/                   the fine-tuned pipeline (``save_pretrained``; LoRA merged into the
                               weights) + training.json (the record)

A world model's ``final/`` loads like any world model (``create_generator(folder)``), an SD one
with ``create_generator("sd:<folder>")``.

One optimizer step (`grad_accum` micro-batches of `batch_size` samples per process):

1. sample prompts from the training prompts;
2. draw the initial noise from per-sample seeds (functions of the seed, the step, the micro-batch
   and the process) and a stop index in the late range;
3. run the sampler without gradient up to the stop index;
4. one model call with gradient at the stop index, and its prediction of the clean sample x0;
5. decode x0 to images in ``[0, 1]`` (world: unfold pixels; SD: VAE decode, with gradient);
6. reward loss ``scale * sum_k w_k * mean(relu(c_k - r_k(images, prompts)))``;
7. regulariser: the diffusion loss on a batch of training scenes (``denoising``), or the MSE
   between the model's and the frozen base's outputs on the inputs of step 4 (``distance``);
8. backward (accelerate), clip, optimizer step, EMA update; log; checkpoint.

Every random draw of step k is a function of ``(seed, k)``, so a resumed run continues exactly as
the uninterrupted one. Checkpoints are written to a temporary folder and renamed; SIGINT /
SIGTERM stop the loop at the end of the step with a checkpoint.
"""

from __future__ import annotations

import inspect
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..generators.base import noise_for_seeds
from ..generators.world.data import ScenePool
from ..generators.world.generator import RECORD_FILE
from ..generators.world.models import build_training_scheduler
from ..generators.world.train import step_generator
from ..rewards.objective import load_rewards
from ..training import (
    EMA,
    Curve,
    Panel,
    RunFolder,
    StopFlag,
    atomic_dir,
    config_diff,
    count_parameters,
    hardware_info,
    load_checkpoint,
    make_accelerator,
    new_session,
    plot_panels,
    read_log,
    rng_state,
    schedule,
    set_rng_state,
    utc_now,
    versions,
)
from .config import RUNTIME_FIELDS, UNET_LORA_TARGETS, FeedbackConfig
from .models import (
    Denoiser,
    FrozenBase,
    WorldBackbone,
    adapters_disabled,
    add_lora,
    clean_prediction,
    load_backbone,
    merge_lora,
    require_peft,
    sampler_scheduler,
)

FINAL = "final"
CURVES = "curves.png"
SALT_DRAWS = 101
SALT_DENOISE = 202


def lr_factor(config: FeedbackConfig, step: int) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then constant or cosine to 0.1."""
    return schedule.lr_factor(step, config.max_steps, config.warmup_steps, 0.1, config.lr_schedule)


def noise_seed(seed: int, draw: int, i: int, batch: int) -> int:
    """Seed of sample `i` of draw `draw` (disjoint from small user seeds)."""
    return (seed + 1) * 1_000_000_007 + draw * batch + i


def feedback_config_diff(a: dict, b: dict) -> list[str]:
    """Fields of two feedback config dicts that change what a run computes and differ."""
    return config_diff(a, b, RUNTIME_FIELDS)


def _uses_cfg(backbone: WorldBackbone, g: float) -> bool:
    # the world pipeline guides whenever g != 1, diffusers' pipelines when g > 1
    return g != 1.0 if backbone.kind == "world" else g > 1.0


def train_feedback(
    config: FeedbackConfig, resume: bool = True, stop_at_step: int | None = None
) -> Path | None:
    """Fine-tune `config.base` against the weighted rewards; returns the final pipeline folder.

    `stop_at_step` stops after that step with a checkpoint (as an interruption would) and
    returns None. Runs under ``accelerate launch`` on several processes (each draws its own
    prompts and noise; the main process writes logs, checkpoints and the final model).
    """
    if config.lora:
        require_peft()  # before any model is loaded
    threads = torch.get_num_threads()
    try:
        return _train(config, resume, stop_at_step)
    finally:
        torch.set_num_threads(threads)


def _train(config: FeedbackConfig, resume: bool, stop_at_step: int | None) -> Path | None:
    acc = make_accelerator(config.mixed_precision, config.device)
    device, main = acc.device, acc.is_main_process
    nproc, proc = acc.num_processes, acc.process_index
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    # ---------------------------------------------------------------- model, rewards, prompts
    prompts = config.prompt_list()
    bb = load_backbone(config.base)
    res = config.resolve(bb.kind, bb.default_steps, bb.default_guidance, getattr(bb, "captions", None))
    steps, (first, last) = res["total_steps"], res["stop_indices"]
    guidance, cfg = res["guidance_scale"], _uses_cfg(bb, res["guidance_scale"])
    rewards = load_rewards(config.objective(), device)

    unet, te = bb.unet, bb.text_encoder
    for m in (unet, te, getattr(bb.pipe, "vae", None)):
        if m is not None:
            m.requires_grad_(False)
    lora_layers = 0
    if config.lora:
        alpha = config.lora_alpha or config.lora_rank
        if config.train_unet:
            lora_layers += add_lora(unet, config.lora_rank, alpha, config.lora_targets or UNET_LORA_TARGETS)
        if config.train_text_encoder:
            lora_layers += add_lora(te, config.lora_rank, alpha, bb.text_lora_targets())
    else:
        if config.train_unet:
            unet.requires_grad_(True)
        if config.train_text_encoder:
            te.requires_grad_(True)
    if config.gradient_checkpointing:
        for m in (unet, getattr(bb.pipe, "vae", None)):
            if m is not None and getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
    denoiser = Denoiser(bb, config.train_text_encoder)
    frozen = FrozenBase(denoiser) if res["reg_type"] == "distance" and not config.lora else None
    bb.pipe.to(device)
    if frozen is not None:
        frozen.to(device)
    denoiser.train()
    bb.pipe.set_progress_bar_config(disable=True)
    params = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(
        params.values(), lr=res["learning_rate"], betas=config.adam_betas, weight_decay=config.weight_decay
    )
    model, optimizer = acc.prepare(denoiser, optimizer)
    ema = EMA(params, config.ema_decay) if config.ema_decay else None
    sched = sampler_scheduler(bb, config.sampler)
    step_kw_ok = "generator" in inspect.signature(sched.step).parameters

    # ---------------------------------------------------------------- run folder, resume
    run_dir = config.run_dir
    run = RunFolder(run_dir)
    log_path = run.log_path
    ckpt = run.latest_checkpoint() if resume else None
    if ckpt is not None:  # every process checks (and raises) alike
        run.check_config(config.to_dict(), RUNTIME_FIELDS, warn=True)
    acc.wait_for_everyone()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            run.remove_checkpoints()
            run.remove_log()
        run.write_config(config.to_dict())
    acc.wait_for_everyone()

    hardware = hardware_info(device)
    step, wall, sessions = 0, 0.0, []
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        if set(state["trainable"]) != set(params):
            raise ValueError(f"checkpoint {ckpt} holds other trainable weights than this config trains")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["trainable"][n])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step, wall, sessions = state["step"], state["wall_time_s"], state["sessions"]
        if main:
            run.truncate_log(step)
    session = new_session(step, hardware, processes=nproc)
    sessions = [*sessions, session]

    # ---------------------------------------------------------------- regulariser data
    pool, train_sched, pool_seconds = None, None, 0.0
    if res["reg_type"] == "denoising":
        pool = ScenePool(
            config.pool_root,
            config.world_categories(),
            config.pool_per_category,
            config.pool_shard_size,
            config.data_seed,
        )
        if main:
            pool_seconds = pool.build(workers=1, progress=config.progress)
        acc.wait_for_everyone()
        train_sched = build_training_scheduler(bb.scheduler.config)
        train_sched.alphas_cumprod = train_sched.alphas_cumprod.to(device)

    B = config.batch_size
    uids, umask = bb.tokens([""] * B, device)
    den = acc.unwrap_model(model)

    def micro_step(draw: int) -> dict:
        # (1) prompts and (2) noise + stop index, all drawn from (seed, draw)
        g = step_generator(config.seed, draw, SALT_DRAWS)
        batch_prompts = [prompts[i] for i in torch.randint(len(prompts), (B,), generator=g).tolist()]
        stop = int(torch.randint(first, last + 1, (1,), generator=g))
        noise = noise_for_seeds([noise_seed(config.seed, draw, i, B) for i in range(B)], bb.noise_shape())
        ids, mask = bb.tokens(batch_prompts, device)
        if cfg:
            ids, mask = torch.cat([uids, ids]), torch.cat([umask, mask])
        # (3) sample without gradient up to the stop index
        sched.set_timesteps(steps, device=device)
        step_kw = {"generator": step_generator(config.seed, draw, SALT_DRAWS + 1)} if step_kw_ok else {}
        x = bb.initial(noise.to(device, unet.dtype), sched)
        with torch.no_grad(), acc.autocast():
            hidden = den.encode(ids, mask)
            for t in sched.timesteps[:stop]:
                xin = sched.scale_model_input(torch.cat([x, x]) if cfg else x, t)
                out = bb.unet_out(den.unet, xin, t, hidden, mask)
                if cfg:
                    u, c = out.chunk(2)
                    out = u + guidance * (c - u)
                x = sched.step(out.to(x.dtype), t, x, return_dict=False, **step_kw)[0]
        # (4) one call with gradient at the stop index -> the predicted clean sample x0
        t = sched.timesteps[stop]
        refl = {
            "x": sched.scale_model_input(torch.cat([x, x]) if cfg else x, t),
            "t": t,
            "ids": ids,
            "mask": mask,
        }
        denoise = None
        if pool is not None:
            k = SALT_DENOISE + draw  # its own batch, noise, timesteps and prompt dropout
            denoise = {
                "batch": pool.batch(config.seed, k, config.reg_batch_size or B, captions=res["reg_captions"]),
                "step": k,
                "seed": config.seed,
                "cond_dropout": config.cond_dropout,
                "train_sched": train_sched,
            }
        raw, dloss = model(refl, denoise)
        out = raw
        if cfg:
            u, c = raw.chunk(2)
            out = u + guidance * (c - u)
        x0 = clean_prediction(sched, out, x, t, stop)
        with acc.autocast():
            # (5) decode to images in [0, 1]
            images = bb.decode(x0)
            # (6) reward losses sum_k w_k * relu(c_k - r_k), scaled
            reward_loss = torch.zeros((), device=device)
            scores = {}
            for r in rewards:
                s = r.reward(images, batch_prompts).float()
                reward_loss = reward_loss + r.weight * F.relu(r.offset - s).mean()
                scores[r.name] = s.detach().mean()
        reward_loss = reward_loss * res["reward_scale"]
        # (7) regulariser
        if res["reg_type"] == "denoising":
            reg = dloss.float()
        elif res["reg_type"] == "distance":
            with torch.no_grad(), acc.autocast():
                if frozen is not None:
                    base_out = frozen(refl)
                else:
                    with adapters_disabled(den.unet, den.text_encoder):
                        base_out = den(refl)[0]
            reg = F.mse_loss(raw.float(), base_out.float())
        else:
            reg = torch.zeros((), device=device)
        loss = reward_loss + config.reg_weight * reg
        return {"loss": loss, "reward_loss": reward_loss, "reg": reg, "stop": stop, "scores": scores}

    # ---------------------------------------------------------------- checkpoints
    def save(at_step: int) -> None:
        session["to_step"] = at_step
        if main:
            state = {
                "trainable": {n: p.detach().cpu().clone() for n, p in params.items()},
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": rng_state(),
                "step": at_step,
                "wall_time_s": wall,
                "sessions": sessions,
                "config": config.to_dict(),
            }
            run.save_checkpoint(at_step, state, config.keep_checkpoints)
        acc.wait_for_everyone()

    def log(record: dict) -> None:
        if main:
            run.log(record)

    def agree(flag: bool) -> bool:
        """Any process's flag (stop signal, time limit) stops every process."""
        if nproc == 1:
            return flag
        return bool(acc.reduce(torch.tensor([float(flag)], device=device), "sum").item() > 0)

    def mean_all(x: torch.Tensor) -> float:
        x = x.detach().float().reshape(1).to(device)
        return float(acc.reduce(x, "mean").item()) if nproc > 1 else float(x.item())

    # ---------------------------------------------------------------- the loop
    end = config.max_steps if stop_at_step is None else min(stop_at_step, config.max_steps)
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc=config.name,
        disable=not (config.progress and main),
        dynamic_ncols=True,
    )
    t_log, s_log, t_session = time.perf_counter(), step, time.perf_counter()
    stopped, time_limited = False, False
    with StopFlag() as flag:
        while step < end:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = res["learning_rate"] * lr_factor(config, step)
            sums: dict[str, torch.Tensor] = {}
            stops = []
            for m in range(config.grad_accum):
                draw = (step * config.grad_accum + m) * nproc + proc
                sync = m == config.grad_accum - 1 or nproc == 1
                ctx = acc.no_sync(model) if not sync else nullcontext()
                with ctx:
                    parts = micro_step(draw)
                    # (8) backward
                    acc.backward(parts["loss"] / config.grad_accum)
                stops.append(parts["stop"])
                for key in ("loss", "reward_loss", "reg"):
                    sums[key] = sums.get(key, 0) + parts[key].detach().float() / config.grad_accum
                for spec, s in parts["scores"].items():
                    sums[f"reward/{spec}"] = sums.get(f"reward/{spec}", 0) + s / config.grad_accum
            grad_norm = None
            if config.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params, step)
            step += 1
            wall += time.perf_counter() - t0
            values = {k: mean_all(v) for k, v in sums.items()}
            bar.update(1)
            shown = {k.split("/", 1)[-1]: f"{v:.4f}" for k, v in values.items() if k.startswith("reward/")}
            bar.set_postfix(reg=f"{values['reg']:.4f}", **shown)
            if step % config.log_every == 0 or step == end:
                now = time.perf_counter()
                log(
                    {
                        "step": step,
                        **values,
                        "stop_index": stops,
                        "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        "steps_per_s": (step - s_log) / max(1e-9, now - t_log),
                        "wall_time_s": wall,
                    }
                )
                t_log, s_log = now, step
            if config.time_limit_s and step < end:
                time_limited = agree(time.perf_counter() - t_session > config.time_limit_s)
            stop_now = agree(flag.stop)
            if step % config.checkpoint_every == 0 or step == end or stop_now or time_limited:
                save(step)
            if stop_now:
                stopped = True
                break
            if time_limited:
                break
    bar.close()
    if stopped or (step < config.max_steps and not time_limited):
        return None

    # ---------------------------------------------------------------- the final pipeline
    final = run_dir / FINAL
    if main:
        if ema is not None:
            ema.copy_to(params)
        merged = merge_lora(den.unet) + merge_lora(den.text_encoder) if config.lora else 0
        den.eval()
        den.requires_grad_(False)
        curves = plot_curves(log_path, run_dir / CURVES)
        info = dict(
            step=step,
            wall=wall,
            sessions=sessions,
            hardware=hardware,
            pool=pool,
            pool_seconds=pool_seconds,
            prompts=prompts,
            time_limited=time_limited,
            lora_layers=lora_layers,
            merged=merged,
            curves=curves,
            nproc=nproc,
        )
        record = _record(config, res, bb, params, log_path, info)

        def write_final(d: Path) -> None:
            bb.save(d)
            (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

        atomic_dir(final, write_final)
    acc.wait_for_everyone()
    return final


def reward_summary(rows: list[dict], window: int = 10) -> dict:
    """Mean score of each reward over the first and the last `window` logged steps."""
    keys = sorted({k for r in rows for k in r if k.startswith("reward/")})
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        n = max(1, min(window, len(vals) // 2 or 1))
        out[k.split("/", 1)[1]] = {"first": sum(vals[:n]) / n, "last": sum(vals[-n:]) / n}
    return out


def plot_curves(log_path: str | Path, out: str | Path) -> Path | None:
    """PNG of each reward's mean score, the regulariser and the loss per step (None: no log)."""
    rows = read_log(log_path)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    keys = sorted({k for r in rows for k in r if k.startswith("reward/")})
    rewards = [Curve(k.split("/", 1)[1], steps, [r.get(k, float("nan")) for r in rows]) for k in keys]
    losses = [
        Curve("regulariser", steps, [r["reg"] for r in rows], {"color": "tab:red"}),
        Curve("reward loss (scaled)", steps, [r["reward_loss"] for r in rows], {"color": "tab:blue"}),
    ]
    return plot_panels(
        [
            Panel(rewards, {"ylabel": "mean reward (training samples)"}),
            Panel(losses, yscale={"value": "symlog", "linthresh": 1e-4}),
        ],
        out,
    )


def _record(
    config: FeedbackConfig, res: dict, bb: WorldBackbone, params: dict, log_path: Path, info: dict
) -> dict:
    """The run's record (``training.json`` next to the final pipeline)."""
    rows = read_log(log_path)
    pool, step, nproc = info["pool"], info["step"], info["nproc"]
    lora = None
    if config.lora:
        alpha = config.lora_alpha or config.lora_rank
        lora = {
            "rank": config.lora_rank,
            "alpha": alpha,
            "layers": info["lora_layers"],
            "merged": info["merged"],
        }
    parts = [p for p, on in (("unet", config.train_unet), ("text_encoder", config.train_text_encoder)) if on]
    return {
        "name": config.name,
        "mode": "feedback",
        "base": config.base,
        "base_kind": bb.kind,
        "steps": step,
        "processes": nproc,
        "samples_per_step": config.batch_size * config.grad_accum * nproc,
        "settings": res,
        "captions": res.get("reg_captions"),  # the caption preset this model's training data had
        "rewards": {k: {"weight": w, "cap": config.reward_caps.get(k)} for k, w in config.rewards.items()},
        "prompts": {
            "source": config.prompts_file or "world suites (train split)",
            "categories": None if config.prompts_file else config.world_categories(),
            "count": len(info["prompts"]),
        },
        "regulariser_data": (
            {
                "dir": str(pool.dir),
                "scenes": pool.per_category * len(pool.categories),
                "build_s": round(info["pool_seconds"], 1),
            }
            if pool is not None
            else None
        ),
        "trained": {
            "lora": lora,
            "parts": parts,
            "parameters": int(sum(p.numel() for p in params.values())),
        },
        "parameters": {"unet": count_parameters(bb.unet), "text_encoder": count_parameters(bb.text_encoder)},
        "reward_first_last": reward_summary(rows),
        "final_reg": rows[-1]["reg"] if rows else None,
        "wall_time_s": round(info["wall"], 1),
        "stopped_by_time_limit": (
            {"time_limit_s": config.time_limit_s, "planned_max_steps": config.max_steps}
            if info["time_limited"]
            else None
        ),
        "curves": str(info["curves"]) if info["curves"] else None,
        "hardware": info["hardware"],
        "sessions": info["sessions"],
        "versions": versions("diffusers", "transformers"),
        "finished": utc_now(),
        "config": {**config.to_dict(), "max_steps": step},
    }


__all__ = ["lr_factor", "plot_curves", "read_log", "reward_summary", "train_feedback"]
