"""Training of the world CLIP: contrastive image-text learning on world renders, with hard negatives.

`train_world_clip(config)` runs (or resumes) a run in ``config.output_dir``::

    run_dir/
      config.json                          the full WorldCLIPTrainConfig
      log.jsonl                            step, losses, accuracies, learning rate, throughput
      checkpoints/step_0001000/state.pt    resumable state (weights, EMA, optimizer, step, wall time)
      final/                               model folder (WorldCLIPModel.save_pretrained) + training.json

Data: images and prompts of the shared `ScenePool` (training scenes only; held-out scenes never
appear). Loss per batch:

- symmetric InfoNCE over the batch (image -> text and text -> image), with pairs whose prompts
  mean the same scene (equal `Scene.key`) masked out as negatives;
- plus ``hard_negative_weight`` x cross-entropy of each image over [its prompt, K hard negatives]
  (its prompt edited through the grammar so that it no longer holds, see `negatives.py`).

Images are augmented to look like imperfect generated images (1 px shifts, Gaussian blur, colour
jitter, Gaussian noise). Every random draw of step `k` (batch, hard negatives, augmentation) is a
function of `(seed, k)`, so a run resumed from a checkpoint continues exactly as the
uninterrupted run (without a time limit: with one, the learning-rate schedule follows the elapsed
time as well, see `time_limit_s`). Checkpoints are written to a temporary folder and renamed
(atomic); SIGINT / SIGTERM stop the loop at the end of the step with a checkpoint.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compalign.generators.world.data import ScenePool
from compalign.world.grammar import parse_prompt

from ...training import (
    EMA,
    RunFolder,
    StopFlag,
    atomic_dir,
    count_parameters,
    hardware_info,
    load_checkpoint,
    make_accelerator,
    new_session,
    schedule,
    utc_now,
    versions,
)
from ...training import folder_size as folder_size  # re-exported (the CLI's import)
from ...training import list_checkpoints as list_checkpoints  # re-exported
from .config import RUNTIME_FIELDS, WorldCLIPTrainConfig  # also importable from here
from .evaluate import evaluate_world_clip
from .model import WorldCLIPModel
from .negatives import HardNegatives
from .reward import resolve_model_dir, weights_root

FINAL = "final"
RECORD_FILE = "training.json"
SHIPPED_NAME = "world-clip"


# ------------------------------------------------------------------------------------- helpers
def lr_factor(config: WorldCLIPTrainConfig, step: int, wall_s: float = 0.0) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then cosine to `min_lr_ratio`; with a
    time limit the cosine follows max(step progress, time progress)."""
    time_frac = wall_s / config.time_limit_s if config.time_limit_s else 0.0
    return schedule.lr_factor(
        step, config.max_steps, config.warmup_steps, config.min_lr_ratio, time_frac=time_frac
    )


# ------------------------------------------------------------------------------------- data
class BatchMaker:
    """Batch `step` of a run as a pure function of `(seed, step)`: pool images (uint8), prompts,
    their token ids, hard-negative token ids and scene-key group ids."""

    def __init__(self, pool, model: WorldCLIPModel, seed: int, batch_size: int, num_negatives: int):
        data = pool.load()
        self.categories = list(pool.categories)
        self.images = [data[c][0] for c in self.categories]
        self.prompts = [data[c][1] for c in self.categories]
        self.model, self.seed, self.batch_size, self.k = model, seed, batch_size, num_negatives
        self.negatives = HardNegatives()
        self._key_ids: dict[str, int] = {}  # prompt -> id of its scene's meaning (`Scene.meaning_key`)
        self._keys: dict[str, int] = {}
        self._parse = parse_prompt
        self._lock = threading.Lock()

    def _key_id(self, prompt: str) -> int:
        k = self._key_ids.get(prompt)
        if k is None:
            key = self._parse(prompt).meaning_key()
            k = self._keys.setdefault(key, len(self._keys))
            self._key_ids[prompt] = k
        return k

    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng([int(self.seed), int(step), 0xC11B])
        b = self.batch_size
        cats = rng.integers(len(self.categories), size=b)
        u = rng.random(b)
        images = np.empty((b, 32, 32, 3), dtype=np.uint8)
        prompts: list[str] = []
        for i, (c, x) in enumerate(zip(cats.tolist(), u.tolist(), strict=True)):
            j = int(x * len(self.prompts[c]))
            images[i] = self.images[c][j]
            prompts.append(self.prompts[c][j])
        u = rng.random((b, self.k, 2))
        with self._lock:
            negs = [n for p, ui in zip(prompts, u, strict=True) for n in self.negatives.sample(p, self.k, ui)]
            ids, mask = self.model.token_ids(prompts + negs)
            keys = torch.tensor([self._key_id(p) for p in prompts], dtype=torch.long)
        return {
            "step": step,
            "images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            "prompts": prompts,
            "negatives": negs,
            "input_ids": ids,
            "attention_mask": mask,
            "keys": keys,
        }


class _Prefetcher:
    """Batches `start, start + 1, ...` made in a background thread, delivered in order."""

    def __init__(self, make, start: int, depth: int):
        self.make, self.next_step, self.depth = make, start, depth
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._run, args=(start,), daemon=True)
            self._thread.start()

    def _run(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = self.make(step)
            except BaseException as e:  # surfaced in the training loop
                item = e
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            step += 1

    def __next__(self) -> dict:
        if self._thread is None:
            batch = self.make(self.next_step)
        else:
            batch = self._q.get()
            if isinstance(batch, BaseException):
                raise batch
        self.next_step += 1
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step * 7919 + 0xA06) % (2**63 - 1))


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels `[N, 2 r + 1]` (sigma 0 gives the identity)."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp(min=1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    return k / k.sum(-1, keepdim=True)


def augment(images: torch.Tensor, config: WorldCLIPTrainConfig, step: int) -> torch.Tensor:
    """Shift, blur, colour jitter and noise, drawn from `(config.seed, step)`; images in [0, 1]."""
    b, c, h, w = images.shape
    dev = images.device
    g = step_generator(config.seed, step)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(b, generator=g) < p

    def uniform(lo: float, hi: float, *shape) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=g)

    x = images
    # shifts (edges replicated)
    r = int(config.aug_shift_px)
    if r > 0 and config.aug_shift_p > 0:
        on = coin(config.aug_shift_p)
        dx = torch.where(on, torch.randint(-r, r + 1, (b,), generator=g), 0)
        dy = torch.where(on, torch.randint(-r, r + 1, (b,), generator=g), 0)
        if on.any():
            padded = F.pad(x, (r, r, r, r), mode="replicate")
            out = x.clone()
            for sx in range(-r, r + 1):
                for sy in range(-r, r + 1):
                    sel = (dx == sx) & (dy == sy) & on  # on the CPU: no device sync
                    if (sx or sy) and bool(sel.any()):
                        sel = sel.to(dev)
                        crop = padded[:, :, r - sy : r - sy + h, r - sx : r - sx + w]
                        out = torch.where(sel[:, None, None, None], crop, out)
            x = out
    # Gaussian blur (separable, one kernel per image)
    if config.aug_blur_p > 0 and config.aug_blur_sigma > 0:
        sigma = torch.where(coin(config.aug_blur_p), uniform(0.0, config.aug_blur_sigma), 0.0)
        k = _gaussian_kernels(sigma.to(dev)).to(x.dtype)  # [B, 5]
        k = k.repeat_interleave(c, dim=0)  # [B*C, 5]
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * c)
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=b * c)
        x = y.reshape(b, c, h, w)
    # colour jitter: brightness gain, per-channel gains and offsets
    if config.aug_jitter_p > 0 and config.aug_jitter > 0:
        s = config.aug_jitter
        on = coin(config.aug_jitter_p)[:, None]
        gain = uniform(1 - s, 1 + s)[:, None] * uniform(1 - s / 2, 1 + s / 2, c)
        offset = uniform(-s / 4, s / 4, c)
        gain = torch.where(on, gain, 1.0).to(dev, x.dtype)[:, :, None, None]
        offset = torch.where(on, offset, 0.0).to(dev, x.dtype)[:, :, None, None]
        x = x * gain + offset
    # Gaussian noise
    if config.aug_noise_p > 0 and config.aug_noise_sigma > 0:
        sigma = torch.where(coin(config.aug_noise_p), uniform(0.0, config.aug_noise_sigma), 0.0)
        noise = torch.randn(x.shape, generator=step_generator(config.seed, step, dev), device=dev)
        x = x + noise.to(x.dtype) * sigma.to(dev, x.dtype)[:, None, None, None]
    return x.clamp(0.0, 1.0)


def clip_losses(
    model: WorldCLIPModel, batch: dict, pixels: torch.Tensor, config: WorldCLIPTrainConfig
) -> dict[str, torch.Tensor]:
    """InfoNCE (+ hard-negative cross-entropy) of one batch; returns the loss and its parts."""
    dev = pixels.device
    b, k = pixels.shape[0], config.num_hard_negatives
    img = F.normalize(model.encode_pixels(model.preprocess(pixels)).float(), dim=-1)
    txt_all = model.encode_tokens(batch["input_ids"].to(dev), batch["attention_mask"].to(dev))
    txt_all = F.normalize(txt_all.float(), dim=-1)
    txt = txt_all[:b]
    scale = model.logit_scale.float()
    logits = scale * img @ txt.T
    keys = batch["keys"].to(dev)
    same = (keys[:, None] == keys[None, :]) & ~torch.eye(b, dtype=torch.bool, device=dev)
    logits = logits.masked_fill(same, -1e4)
    target = torch.arange(b, device=dev)
    l_i2t = F.cross_entropy(logits, target)
    l_t2i = F.cross_entropy(logits.T, target)
    out = {"infonce": 0.5 * (l_i2t + l_t2i)}
    with torch.no_grad():
        out["acc_i2t"] = (logits.argmax(1) == target).float().mean()
    loss = out["infonce"]
    if k > 0:
        neg = txt_all[b:].view(b, k, -1)
        pos = (img * txt).sum(-1, keepdim=True)
        hn = torch.cat([pos, torch.einsum("bd,bkd->bk", img, neg)], dim=1) * scale
        out["hard_neg"] = F.cross_entropy(hn, torch.zeros(b, dtype=torch.long, device=dev))
        with torch.no_grad():
            out["acc_hard"] = (hn.argmax(1) == 0).float().mean()
        loss = loss + config.hard_negative_weight * out["hard_neg"]
    out["loss"] = loss
    return out


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------- trainer
def train_world_clip(
    config: WorldCLIPTrainConfig, resume: bool = True, stop_at_step: int | None = None
) -> Path | None:
    """Train (or resume) a world CLIP; returns the final model folder (``run_dir/final``).

    `stop_at_step` stops after that step with a checkpoint (as an interruption would) and returns
    None; the schedule still spans `config.max_steps`. SIGINT / SIGTERM also return None after a
    checkpoint; running the same call again resumes. A time limit (`config.time_limit_s`) ends the
    run normally at the step reached.
    """
    threads = torch.get_num_threads()
    try:
        return _train(config, resume, stop_at_step)
    finally:
        torch.set_num_threads(threads)


def _train(config: WorldCLIPTrainConfig, resume: bool, stop_at_step: int | None) -> Path | None:
    accelerator = make_accelerator(config.mixed_precision, config.device)
    device = accelerator.device
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunFolder(run_dir)
    ckpt = run.latest_checkpoint() if resume else None
    if ckpt is not None:
        run.check_config(config.to_dict(), RUNTIME_FIELDS)
    if not resume:
        run.remove_checkpoints()
        run.remove_log()
    run.write_config(config.to_dict())
    hardware = hardware_info(device)

    model = WorldCLIPModel.from_arch(config.arch, seed=config.seed).to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay),
        lr=config.learning_rate,
        betas=config.adam_betas,
        fused=device.type == "cuda",
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    core: WorldCLIPModel = accelerator.unwrap_model(model)
    params = dict(core.named_parameters())
    ema = EMA(params, config.ema_decay) if config.ema_decay else None

    step, wall, sessions, loss_avg = 0, 0.0, [], None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_shadow(state["ema"])  # this trainer saves the averages alone
        step, wall, sessions = state["step"], state["wall_time_s"], state["sessions"]
        loss_avg = state.get("loss_avg")
        run.truncate_log(step)
    session = new_session(step, hardware)
    sessions = [*sessions, session]

    pool = ScenePool(
        config.pool_dir or None,
        config.categories,
        config.pool_per_category,
        config.pool_shard_size,
        config.data_seed,
    )
    workers = config.num_workers if config.num_workers is not None else (os.cpu_count() or 1)
    pool_seconds = pool.build(workers=max(1, workers), progress=config.progress)
    t_load = time.perf_counter()
    pool.load()
    pool_seconds += time.perf_counter() - t_load
    make = BatchMaker(pool, core, config.seed, config.batch_size, config.num_hard_negatives)

    def save(at_step: int) -> None:
        nonlocal loss_avg
        if loss_avg_t is not None:
            loss_avg = float(loss_avg_t)
        session["to_step"] = at_step
        state = {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": {k: v.cpu() for k, v in ema.shadow.items()} if ema is not None else None,
            "step": at_step,
            "wall_time_s": wall,
            "sessions": sessions,
            "loss_avg": loss_avg,
            "config": config.to_dict(),
        }
        run.save_checkpoint(at_step, state, config.keep_checkpoints)

    def out_of_time() -> bool:
        return config.time_limit_s is not None and wall >= config.time_limit_s

    end = config.max_steps if stop_at_step is None else min(stop_at_step, config.max_steps)
    bar = tqdm(total=config.max_steps, initial=step, desc="world-clip", disable=not config.progress)
    data = _Prefetcher(make, step, config.prefetch) if step < end and not out_of_time() else None
    t_log, s_log = time.perf_counter(), step
    loss_avg_t = None if loss_avg is None else torch.tensor(loss_avg, device=device)
    interrupted = time_stopped = False
    try:
        with StopFlag() as flag:
            while step < end and not out_of_time():
                t0 = time.perf_counter()
                batch = next(data)
                assert batch["step"] == step, (batch["step"], step)
                lr = config.learning_rate * lr_factor(config, step, wall)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                pixels = batch["images"].to(device, non_blocking=True).float() / 255.0
                pixels = augment(pixels, config, step)
                with accelerator.autocast():
                    parts = clip_losses(core, batch, pixels, config)
                accelerator.backward(parts["loss"])
                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(params, step)
                step += 1
                # no device sync per step: the running loss stays on the device between logs
                loss_t = parts["loss"].detach().float()
                loss_avg_t = loss_t if loss_avg_t is None else 0.98 * loss_avg_t + 0.02 * loss_t
                wall += time.perf_counter() - t0
                bar.update(1)
                if config.progress and (step % 10 == 0 or step == end):
                    bar.set_postfix(loss=f"{float(loss_avg_t):.4f}", lr=f"{lr:.2e}")
                if step % config.log_every == 0 or step == end or out_of_time():
                    loss_avg = float(loss_avg_t)
                    now = time.perf_counter()
                    record = {
                        "step": step,
                        "loss": float(loss_t),
                        "loss_avg": loss_avg,
                        **{k: float(v.detach()) for k, v in parts.items() if k != "loss"},
                        "logit_scale": float(core.logit_scale.detach()),
                        "lr": lr,
                        "steps_per_s": (step - s_log) / max(1e-9, now - t_log),
                        "wall_time_s": wall,
                    }
                    run.log(record)
                    t_log, s_log = now, step
                if step % config.checkpoint_every == 0 or step == end or flag.stop or out_of_time():
                    save(step)
                if flag.stop:
                    interrupted = True
                    break
            time_stopped = out_of_time() and step < config.max_steps and not interrupted
    finally:
        bar.close()
        if data is not None:
            data.close()
    if interrupted or (step < config.max_steps and not time_stopped):
        return None

    # ---------------------------------------------------------------- the final model
    if ema is not None:
        ema.copy_to(params)
    core.eval()
    evaluation = None
    eval_seconds = 0.0
    if config.eval_per_category > 0:
        t0 = time.perf_counter()
        evaluation = evaluate_world_clip(
            core, n_per_category=config.eval_per_category, seed=config.seed, progress=config.progress
        )
        eval_seconds = time.perf_counter() - t0
    record = {
        "name": SHIPPED_NAME,
        "kind": "world-clip",
        "steps": step,
        "max_steps": config.max_steps,
        "stopped_by": "time_limit" if time_stopped else "max_steps",
        "time_limit_s": config.time_limit_s,
        "batch_size": config.batch_size,
        "wall_time_s": round(wall, 1),
        "train_time_s": round(wall, 1),
        "samples_per_s": round(step * config.batch_size / max(wall, 1e-9), 1) if step else None,
        "pool_s_this_run": round(pool_seconds, 1),
        "eval_s": round(eval_seconds, 1),
        "data": {
            "source": "pool",
            "dir": str(pool.dir),
            "categories": pool.categories,
            "scenes": pool.per_category * len(pool.categories),
        },
        "final_loss_avg": loss_avg,
        "parameters": count_parameters(core),
        "evaluation": evaluation,
        "hardware": hardware,
        "sessions": sessions,
        "versions": versions("transformers", "accelerate", "numpy"),
        "finished": utc_now(),
        "config": config.to_dict(),
    }

    def write_final(d: Path) -> None:
        core.save_pretrained(d)
        (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

    atomic_dir(run_dir / FINAL, write_final)
    return run_dir / FINAL


# ------------------------------------------------------------------------------------- export
def export_world_clip(run_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Write a finished run's (or model folder's) model as fp16 safetensors to `dest`
    (default: the package's ``weights/world-clip``), with its training record."""

    src = resolve_model_dir(Path(run_dir))
    model = WorldCLIPModel.from_pretrained(src)
    dest = Path(dest) if dest is not None else weights_root() / SHIPPED_NAME

    def write(d: Path) -> None:
        model.save_pretrained(d, dtype=torch.float16)
        rec_path = src / RECORD_FILE
        record = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        record["exported"] = {"dtype": "float16", "from": str(src)}
        (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

    atomic_dir(dest, write)
    return dest
