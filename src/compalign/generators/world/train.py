"""Training of world models: text-to-image diffusion from scratch, and one/two-step distillation.

`train_world_model(config)` runs (or resumes) a run in ``config.run_dir``::

    run_dir/
      config.json              the full WorldTrainConfig
      log.jsonl                step, loss, learning rate, throughput
      checkpoints/step_0000500/state.pt   resumable state (weights, EMA, optimizer, schedule,
                                           step, RNG states, wall time, sessions)
      pairs/shard_00000.pt     (distill) cached teacher pairs
      final/                   WorldPipeline (save_pretrained) + training.json (the record)

Every random draw of step `k` (batch, noise, timesteps, prompt dropout) is a function of
`(seed, k)`, so a run resumed from a checkpoint continues exactly as the uninterrupted run.
Checkpoints are written to a temporary folder and renamed (atomic); SIGINT / SIGTERM make the
loop stop at the end of the current step and save a checkpoint before exiting.

Distillation (the one-step generator): the teacher's multi-step, guided sampler maps noise z to
an image x = T(z, prompt). The student, initialised as a copy of the teacher and run for
`student_steps` (1) DDIM steps from the same z without guidance, regresses onto x (Luhman &
Luhman 2021, "knowledge distillation in iterative generative models"). Pairs are generated once,
cached in shards, then the student trains on random batches of them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import MISSING, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...training import (
    EMA,
    STATE_FILE,
    RunFolder,
    StopFlag,
    atomic_dir,
    folder_size,
    hardware_info,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_accelerator,
    new_session,
    rng_state,
    schedule,
    set_rng_state,
    utc_now,
    versions,
)
from ..base import noise_for_seeds
from ..registry import create_generator, pipeline_dir, weights_root
from .config import RUNTIME_FIELDS, WorldTrainConfig, create_preset
from .data import ScenePool, batches, make_batch
from .generator import RECORD_FILE, load_pipeline, quiet_loading
from .models import build_components, build_training_scheduler, count_parameters
from .pipeline import WorldPipeline
from .tokenizer import tokenize

FINAL = "final"
PAIRS = "pairs"


# ------------------------------------------------------------------------------------- helpers
def lr_factor(config: WorldTrainConfig, step: int) -> float:
    """Learning-rate multiplier at `step` (warm-up, then cosine to `min_lr_ratio` or constant)."""
    return schedule.lr_factor(
        step, config.max_steps, config.warmup_steps, config.min_lr_ratio, config.lr_schedule
    )


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + step * 7919 + salt) % (2**63 - 1))


def pair_seed(seed: int, index: int) -> int:
    """Noise seed of distillation pair `index` (disjoint from small user seeds)."""
    return (seed + 1) * 100_000_000 + index


def default_threads(config: WorldTrainConfig, device: torch.device) -> int:
    """`config.num_threads`, else on a CPU half the cores left over by the data workers.

    Measured on a 2-core machine shared with other jobs: two torch threads plus a rendering worker
    ran ~10x slower than one thread (OpenMP threads wait for each other when a core is taken).
    """
    if config.num_threads:
        return config.num_threads
    if device.type != "cpu":
        return torch.get_num_threads()
    workers = config.num_workers if config.data_source == "stream" and config.mode == "diffusion" else 0
    return max(1, ((os.cpu_count() or 1) - workers) // 2)


# ------------------------------------------------------------------------------------- trainer
class _Run:
    """State shared by both training modes: the accelerator and the run folder."""

    def __init__(self, config: WorldTrainConfig, resume: bool):
        self.config = config
        self.accelerator = make_accelerator(config.mixed_precision, config.device)
        self.device = self.accelerator.device
        torch.set_num_threads(default_threads(config, self.device))
        self.run_dir = config.run_dir
        self.folder = RunFolder(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.folder.latest_checkpoint() if resume else None
        if self.ckpt is not None:
            # fields added after a run started count as their defaults (e.g. `captions`: exact)
            defaults = {f.name: f.default for f in fields(WorldTrainConfig) if f.default is not MISSING}
            self.folder.check_config(config.to_dict(), RUNTIME_FIELDS, warn=True, defaults=defaults)
        if not resume:
            self.folder.remove_checkpoints()
        self.folder.write_config(config.to_dict())
        self.hardware = hardware_info(self.device)


def _trainable(pipe: WorldPipeline) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})


def _new_pipeline(config: WorldTrainConfig) -> WorldPipeline:
    torch.manual_seed(config.seed)
    arch = config.arch
    return WorldPipeline(
        **build_components(arch),
        patch_size=arch.patch_size,
        default_steps=arch.sample_steps,
        default_guidance_scale=arch.guidance_scale,
    )


def _student_pipeline(config: WorldTrainConfig, teacher: WorldPipeline) -> WorldPipeline:
    from diffusers import DDIMScheduler  # lazy: loads diffusers

    sched = DDIMScheduler(
        **scheduler_config_from(teacher.scheduler.config),
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    student = WorldPipeline(
        unet=copy.deepcopy(teacher.unet),
        text_encoder=copy.deepcopy(teacher.text_encoder),
        tokenizer=teacher.tokenizer,
        scheduler=sched,
        patch_size=teacher.config.patch_size,
        default_steps=config.student_steps,
        default_guidance_scale=1.0,
    )
    student.unet.requires_grad_(True)
    student.text_encoder.requires_grad_(True)
    return student


def _init_weights(pipe: WorldPipeline, source: str) -> None:
    """Copy the UNet and text-encoder weights of a saved pipeline into `pipe` (strict)."""

    other = create_generator(source, device="cpu").pipe
    for name in ("unet", "text_encoder"):
        try:
            getattr(pipe, name).load_state_dict(getattr(other, name).float().state_dict())
        except RuntimeError as e:
            msg = f"init_from {source!r}: its {name} does not match this preset's arch: {e}"
            raise ValueError(msg) from e


def init_record(source: str | None) -> dict | None:
    if not source:
        return None

    d = pipeline_dir(Path(source)) if Path(source).exists() else None
    rec = (d / RECORD_FILE) if d is not None else None
    if rec is not None and rec.is_file():
        r = json.loads(rec.read_text())
        return {"source": source, "steps": r.get("steps"), "hardware": r.get("hardware"),
                "sessions": r.get("sessions"), "wall_time_s": r.get("wall_time_s"),
                "init_from": r.get("init_from")}  # fmt: skip
    return {"source": source}


def preset_pipeline(config: WorldTrainConfig | str) -> WorldPipeline:
    """A randomly initialised pipeline with a preset's architecture and sampler settings (the
    compute of the trained model; for benchmarks and tests). A distill preset gets its teacher's
    preset architecture with the student's sampler."""

    if isinstance(config, str):
        config = create_preset(config)
    if config.mode == "distill":
        return _student_pipeline(config, _new_pipeline(create_preset(config.teacher)))
    return _new_pipeline(config)


def checkpoint_pipeline(checkpoint: str | Path, ema: bool = True) -> tuple[WorldPipeline, int]:
    """The pipeline of a diffusion run's checkpoint folder (``<run>/checkpoints/step_*``) and its
    step: the run's architecture from its ``config.json`` with the checkpoint's EMA weights (the
    weights a finished run exports; `ema=False` or a run without EMA: the raw weights)."""
    checkpoint = Path(checkpoint)
    cfg_path = checkpoint.parent.parent / "config.json"
    if not (checkpoint / STATE_FILE).is_file() or not cfg_path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a checkpoint of a run folder ({STATE_FILE}, ../../config.json)"
        )
    config = WorldTrainConfig.from_dict(json.loads(cfg_path.read_text()))
    if config.mode != "diffusion":
        raise ValueError(
            f"{checkpoint}: only diffusion runs have a pipeline of their own (mode {config.mode!r})"
        )
    state = load_checkpoint(checkpoint)
    pipe = _new_pipeline(config)
    model = _trainable(pipe)
    model.load_state_dict(state["model"])
    if ema and state.get("ema") is not None:
        shadow = state["ema"]["shadow"]
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(shadow[name].to(p.dtype))
    model.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, int(state["step"])


def scheduler_config_from(cfg) -> dict:
    keep = ("num_train_timesteps", "beta_schedule", "prediction_type", "beta_start", "beta_end")
    return {k: cfg[k] for k in keep if k in cfg}


def resolve_teacher(config: WorldTrainConfig) -> str:
    """The teacher as a folder when one exists: a path, or the sibling run ``<runs>/<teacher>``
    of this run (so ``world-onestep`` finds ``runs/world-base`` before it is shipped); else the
    name of a shipped model."""

    for cand in (Path(config.teacher), config.run_dir.parent / config.teacher):
        if cand.exists() and pipeline_dir(cand) is not None:
            return str(pipeline_dir(cand))
    return config.teacher


def _load_teacher(config: WorldTrainConfig, device) -> tuple[WorldPipeline, str]:
    source = resolve_teacher(config)
    gen = create_generator(source, device=device)
    return gen.pipe, source


def train_world_model(
    config: WorldTrainConfig, resume: bool = True, stop_at_step: int | None = None
) -> Path | None:
    """Train (or resume) a world model; returns the final pipeline folder.

    `stop_at_step` stops early after that step with a checkpoint (as an interruption would) and
    returns None; the schedule still spans `config.max_steps`.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config, resume, stop_at_step)
    finally:
        torch.set_num_threads(threads)


def _train(config: WorldTrainConfig, resume: bool, stop_at_step: int | None) -> Path | None:
    run = _Run(config, resume)
    teacher_name = None
    if config.mode == "distill":
        teacher, teacher_name = _load_teacher(config, run.device)
        pipe = _student_pipeline(config, teacher)
    else:
        teacher = None
        pipe = _new_pipeline(config)
        if config.init_from and run.ckpt is None:
            _init_weights(pipe, config.init_from)
    pipe.set_progress_bar_config(disable=True)
    model = _trainable(pipe)
    model.train()
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        params.values(),
        lr=config.learning_rate,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s))
    model, optimizer, scheduler = run.accelerator.prepare(model, optimizer, scheduler)
    params = dict(run.accelerator.unwrap_model(model).named_parameters())
    ema = EMA(params, config.ema_decay) if config.ema_decay else None

    step, wall, sessions, loss_avg = 0, 0.0, [], None
    if run.ckpt is not None:
        state = load_checkpoint(run.ckpt)
        run.accelerator.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step, wall, sessions = state["step"], state["wall_time_s"], state["sessions"]
        loss_avg = state.get("loss_avg")
        run.folder.truncate_log(step)
    session = new_session(step, run.hardware)
    sessions = [*sessions, session]

    pool, pool_seconds = None, 0.0
    pool_needed = config.mode == "diffusion" and config.data_source == "pool"
    if pool_needed or (config.mode == "distill" and config.pair_prompts == "pool"):
        pool = ScenePool(
            config.pool_root,
            config.categories,
            config.pool_per_category,
            config.pool_shard_size,
            config.data_seed,
        )
        pool_seconds = pool.build(workers=max(1, config.num_workers), progress=config.progress)
    pairs, pair_seconds = None, 0.0
    if config.mode == "distill":
        pairs, pair_seconds = _ensure_pairs(run, teacher, pipe, pool)
        del teacher

    def save(at_step: int) -> None:
        session["to_step"] = at_step
        state = {
            "model": run.accelerator.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng_state(),
            "step": at_step,
            "wall_time_s": wall,
            "sessions": sessions,
            "loss_avg": loss_avg,
            "config": config.to_dict(),
        }
        run.folder.save_checkpoint(at_step, state, config.keep_checkpoints)

    end = config.max_steps if stop_at_step is None else min(stop_at_step, config.max_steps)
    data = None
    if config.mode == "diffusion" and step < end:
        if pool is not None:
            data = pool.batches(config.seed, config.batch_size, step, captions=config.captions)
        else:
            data = batches(
                config.seed,
                config.batch_size,
                config.categories,
                step,
                config.num_workers,
                captions=config.captions,
            )
        train_sched = build_training_scheduler(pipe.scheduler.config)
        train_sched.alphas_cumprod = train_sched.alphas_cumprod.to(run.device)

    bar = tqdm(
        total=config.max_steps,
        initial=step,
        desc=f"{config.name}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    t_log, s_log = time.perf_counter(), step
    t_session = time.perf_counter()
    stopped, time_limited = False, False
    with StopFlag() as flag:
        while step < end:
            t0 = time.perf_counter()
            if config.mode == "diffusion":
                batch = next(data)
                assert batch["step"] == step, (batch["step"], step)
                loss = diffusion_loss(
                    config, model, pipe, train_sched, batch, step, run.device, run.accelerator.autocast
                )
            else:
                loss = _distill_loss(config, run, pipe, pairs, step)
            run.accelerator.backward(loss)
            if config.max_grad_norm:
                run.accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params, step)
            step += 1
            wall += time.perf_counter() - t0
            value = float(loss.detach())
            loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % config.log_every == 0 or step == end:
                now = time.perf_counter()
                run.folder.log(
                    {
                        "step": step,
                        "loss": value,
                        "loss_avg": loss_avg,
                        "lr": scheduler.get_last_lr()[0],
                        "steps_per_s": (step - s_log) / max(1e-9, now - t_log),
                        "wall_time_s": wall,
                    }
                )
                t_log, s_log = now, step
            if config.time_limit_s and step < end and time.perf_counter() - t_session > config.time_limit_s:
                time_limited = True
            if step % config.checkpoint_every == 0 or step == end or flag.stop or time_limited:
                save(step)
            if flag.stop:
                stopped = True
                break
            if time_limited:
                break
    bar.close()
    if stopped or (step < config.max_steps and not time_limited):
        return None

    # ---------------------------------------------------------------- export the final pipeline
    final_model = run.accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(dict(final_model.named_parameters()))
    final_model.eval()
    record = {
        "name": config.name,
        "preset": config.name,
        "mode": config.mode,
        "steps": step,
        "batch_size": config.batch_size,
        "wall_time_s": round(wall + pair_seconds, 1),
        "train_time_s": round(wall, 1),
        "pair_generation_s": round(pair_seconds, 1),
        "data": (
            {
                "source": "pool",
                "dir": str(pool.dir),
                "scenes": pool.per_category * len(pool.categories),
                "build_s_this_run": round(pool_seconds, 1),
            }
            if pool is not None
            else {"source": "stream"}
        ),
        "final_loss_avg": loss_avg,
        "stopped_by_time_limit": (
            {"time_limit_s": config.time_limit_s, "planned_max_steps": config.max_steps}
            if time_limited
            else None
        ),
        "parameters": {
            "unet": count_parameters(pipe.unet),
            "text_encoder": count_parameters(pipe.text_encoder),
        },
        "teacher": teacher_name,
        "init_from": init_record(config.init_from),
        "hardware": run.hardware,
        "sessions": sessions,
        "versions": versions("diffusers", "transformers"),
        "finished": utc_now(),
        "config": {**config.to_dict(), "max_steps": step},
    }

    def write_final(d: Path) -> None:
        with quiet_loading():
            pipe.save_pretrained(d)
        (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

    atomic_dir(run.run_dir / FINAL, write_final)
    return run.run_dir / FINAL


def diffusion_loss(
    config: WorldTrainConfig,
    model: torch.nn.ModuleDict,
    pipe: WorldPipeline,
    train_sched,
    batch: dict,
    step: int,
    device: torch.device | str = "cpu",
    autocast=nullcontext,
) -> torch.Tensor:
    """Denoising loss of batch `step` (noise, timesteps and prompt dropout drawn from (seed, step))."""
    g = step_generator(config.seed, step)
    x0 = pipe.fold(batch["images"]).to(device)
    b = x0.shape[0]
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.randint(0, train_sched.config.num_train_timesteps, (b,), generator=g).to(device)
    drop = torch.rand(b, generator=g) < config.cond_dropout
    prompts = ["" if d else p for d, p in zip(drop.tolist(), batch["prompts"], strict=True)]
    ids, mask = tokenize(pipe.tokenizer, prompts, device=device)
    xt = train_sched.add_noise(x0, noise, t)
    kind = train_sched.config.prediction_type
    if kind == "v_prediction":
        target = train_sched.get_velocity(x0, noise, t)
    elif kind == "epsilon":
        target = noise
    else:
        target = x0
    with autocast():
        enc = model["text_encoder"](input_ids=ids, attention_mask=mask).last_hidden_state
        pred = pipe.predict(xt, t, enc, mask, unet=model["unet"])
    per = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    if config.snr_gamma:
        ac = train_sched.alphas_cumprod[t].float()
        snr = ac / (1 - ac)
        clipped = snr.clamp(max=config.snr_gamma)
        w = {"v_prediction": clipped / (snr + 1), "epsilon": clipped / snr, "sample": clipped}[kind]
        per = per * w
    return per.mean()


def _distill_loss(config, run, pipe, pairs, step) -> torch.Tensor:
    g = step_generator(config.seed, step, salt=1)
    n = pairs["images"].shape[0]
    idx = torch.randint(0, n, (config.batch_size,), generator=g)
    noise = noise_for_seeds(pairs["seeds"][idx].tolist(), pipe.noise_shape(1)[1:]).to(run.device)
    target = pairs["images"][idx].to(run.device).float()
    prompts = [pairs["prompts"][i] for i in idx.tolist()]
    with run.accelerator.autocast():
        pred = pipe.denoise(noise, prompts, config.student_steps, 1.0, enable_grad=True, clamp=False)
    diff = pred.float() - target
    if config.distill_loss == "mse":
        return diff.pow(2).mean()
    if config.distill_loss == "l1":
        return diff.abs().mean()
    c = 0.03  # pseudo-Huber in [0, 1] image units
    return (torch.sqrt(diff.pow(2) + c * c) - c).mean()


def _ensure_pairs(
    run: _Run, teacher: WorldPipeline, student: WorldPipeline, pool: ScenePool | None = None
) -> tuple[dict, float]:
    """Generate (or reuse) the cached teacher pairs; returns them and the seconds spent in total.

    Prompts of shard `s` come from the scene grammar (`pair_prompts="sample"`) or from `pool`
    (`"pool"`), drawn with (seed, s) either way, so a resumed run makes the same shards."""
    config = run.config
    root = run.run_dir / PAIRS
    root.mkdir(exist_ok=True)
    n_shards = math.ceil(config.num_pairs / config.pair_shard_size)
    shape = student.noise_shape(1)[1:]
    teacher.set_progress_bar_config(disable=True)
    bar = tqdm(
        total=n_shards, desc=f"{config.name}: teacher pairs", disable=not config.progress, dynamic_ncols=True
    )
    for s in range(n_shards):
        path = root / f"shard_{s:05d}.pt"
        if path.exists():
            bar.update(1)
            continue
        t0 = time.perf_counter()
        size = min(config.pair_shard_size, config.num_pairs - s * config.pair_shard_size)
        if pool is not None:  # training-scene prompts: no layout sampling
            batch = pool.batch(config.seed, s, size, with_images=False)
        else:  # prompts only (layouts checked, nothing rendered): no scene pool needed
            batch = make_batch(config.seed, s, size, config.categories, with_images=False)
        seeds = [pair_seed(config.seed, s * config.pair_shard_size + i) for i in range(size)]
        noise = noise_for_seeds(seeds, shape)
        images = []
        for i in range(0, size, config.batch_size):
            images.append(
                teacher.denoise(
                    noise[i : i + config.batch_size].to(run.device),
                    batch["prompts"][i : i + config.batch_size],
                    config.teacher_steps,
                    config.teacher_guidance,
                ).cpu()
            )
        shard = {
            "prompts": batch["prompts"],
            "seeds": torch.tensor(seeds, dtype=torch.long),
            "images": torch.cat(images).half(),
            "seconds": time.perf_counter() - t0,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(shard, tmp)
        os.replace(tmp, path)
        bar.update(1)
    bar.close()
    shards = [torch.load(root / f"shard_{s:05d}.pt", weights_only=False) for s in range(n_shards)]
    pairs = {
        "prompts": [p for sh in shards for p in sh["prompts"]],
        "seeds": torch.cat([sh["seeds"] for sh in shards]),
        "images": torch.cat([sh["images"] for sh in shards]),
    }
    return pairs, float(sum(sh["seconds"] for sh in shards))


# ------------------------------------------------------------------------------------- export
def export_model(
    source: str | Path,
    name: str,
    dest_root: str | Path | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Copy a finished run (or pipeline folder) into the package weights as `name`, in fp16."""

    src = pipeline_dir(Path(source))
    if src is None:
        raise FileNotFoundError(f"{source} has no saved pipeline (model_index.json or final/)")
    pipe = load_pipeline(src, dtype)
    dest = Path(dest_root or weights_root()) / name

    def write(d: Path) -> None:
        with quiet_loading():
            pipe.save_pretrained(d, safe_serialization=True)
        rec_path = src / RECORD_FILE
        record = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        record["exported"] = {"name": name, "dtype": str(dtype).replace("torch.", ""), "from": str(src)}
        (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_dir(dest, write)
    return dest


__all__ = [
    "EMA",
    "checkpoint_pipeline",
    "export_model",
    "folder_size",
    "latest_checkpoint",
    "list_checkpoints",
    "lr_factor",
    "preset_pipeline",
    "train_world_model",
]
