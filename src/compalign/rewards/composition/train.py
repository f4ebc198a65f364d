"""Training of a composition reward model on preference pairs (one model per aspect).

`train_reward_model(config)` runs (or resumes) a run in ``config.output_dir``::

    run_dir/
      config.json                          the full RewardTrainConfig
      log.jsonl                            training lines (step, loss, batch accuracy, lr, pairs/s)
                                           and evaluation lines ("event": "eval", held-out accuracy)
      curves.png                           loss and accuracy curves
      checkpoints/step_0000200/state.pt    resumable state (weights, optimizer, step, evaluations)
      best/                                model folder of the best held-out accuracy so far
      final/                               the chosen model, normalised, + training.json

Loss: Bradley-Terry on each pair, ``-log sigmoid(s_better - s_worse - margin)`` on raw scores
(`margin` > 0 asks for a clear gap). Batches hold `batch_size` pairs over all processes; each
process takes its share (split into `grad_accum_steps` micro-batches) and its loss is scaled so the
averaged gradient is exactly that of the whole batch, whatever the number of processes.

Model selection: after every epoch the pair accuracy on the held-out pairs (``split ==
"heldout"``: prompts never trained on) is measured, and the best epoch (accuracy, then held-out loss)
is kept; training pairs never choose a checkpoint. Without held-out pairs the last epoch is kept
and the record says so. The chosen model's score normalisation is then measured on its training
images (`CompositionRewardModel.set_normalization`).

Every random draw of step `k` (the epoch's shuffle, dropout, augmentation) is a function of
``(seed, k)`` (and the process), so a resumed run continues exactly as the uninterrupted run
(without a time limit: with one the schedule follows the elapsed time too). Checkpoints are written
to a temporary folder and renamed (atomic); SIGINT / SIGTERM stop at the end of the step with a
checkpoint. Mixed precision and several processes (DDP) go through accelerate:
``accelerate launch --multi_gpu --num_processes 4 $(which compalign) reward train ...`` (GPUs) or
``torchrun --nproc_per_node 2 $(which compalign) reward train ... --device cpu`` (CPU processes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compalign.cache import scene_pool_dir
from compalign.generators.world.data import ScenePool
from compalign.world.grammar import PromptError, parse_prompt
from compalign.world.suites import list_categories

from ...training import (
    Curve,
    Panel,
    RunFolder,
    StopFlag,
    atomic_dir,
    config_diff,
    hardware_info,
    load_checkpoint,
    make_accelerator,
    new_session,
    plot_panels,
    read_log,
    schedule,
    utc_now,
    versions,
)
from ..world_clip.train import BatchMaker, WorldCLIPTrainConfig, augment
from .backbones import fuse
from .config import RUNTIME_FIELDS, RewardTrainConfig  # also importable from here
from .data import PairSet, PairsFileError, read_pairs
from .model import (
    RECORD_FILE,
    SHIPPED,
    WEIGHTS_FILE,
    CompositionRewardModel,
    _load_weights,
    resolve_model_dir,
    weights_root,
)

BEST = "best"
FINAL = "final"
PLOT_FILE = "curves.png"
HEAD_LR_FRESH = 1e-3


# ------------------------------------------------------------------------------------- helpers
def lr_factor(step: int, total: int, warmup: int, min_ratio: float, time_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup` steps, then cosine to `min_ratio` (progress: max of steps and
    `time_frac`)."""
    return schedule.lr_factor(step, total, warmup, min_ratio, time_frac=time_frac)


def bt_loss(s_better: torch.Tensor, s_worse: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log sigmoid(s_better - s_worse - margin)``."""
    return -F.logsigmoid(s_better.float() - s_worse.float() - margin)


def pair_accuracy(s_better: torch.Tensor, s_worse: torch.Tensor) -> float:
    """Fraction of pairs ranked right (a tie counts one half)."""
    if s_better.numel() == 0:
        return float("nan")
    right = (s_better > s_worse).float() + 0.5 * (s_better == s_worse).float()
    return float(right.mean())


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] % (2**63 - 1))


def _param_groups(model: CompositionRewardModel, lr: float, head_lr: float, weight_decay: float) -> list:
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        decay = p.ndim >= 2
        key = (is_head, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "base_lr": head_lr if is_head else lr,
                "lr": head_lr if is_head else lr,
                "name": ("head" if is_head else "backbone") + ("" if decay else "_no_decay"),
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def _config_defaults() -> dict:
    return {f.name: f.default for f in fields(RewardTrainConfig) if f.default is not MISSING}


def reward_config_diff(a: dict, b: dict) -> list[str]:
    """Fields of two reward-training config dicts that change what a run computes and differ (a
    field missing from one, e.g. a run started before the field existed, counts as its default)."""
    return config_diff(a, b, RUNTIME_FIELDS, _config_defaults())


@torch.no_grad()
def score_items(
    model: CompositionRewardModel,
    images: np.ndarray,
    items: list[tuple[int, str]],
    batch_size: int,
    accelerator=None,
    normalized: bool = False,
) -> torch.Tensor:
    """Scores (float32, CPU) of ``(image index, prompt)`` items; with an `accelerator` of several
    processes each scores every n-th item and the scores are gathered."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    device = model.device
    mine = items[rank::world]
    out = []
    was = model.training
    model.eval()
    ctx = accelerator.autocast() if accelerator is not None else nullcontext()
    with ctx:
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            idx = torch.as_tensor([c[0] for c in chunk], dtype=torch.long)
            x = torch.from_numpy(images[idx.numpy()]).to(device).permute(0, 3, 1, 2).float() / 255.0
            out.append(model(x, [c[1] for c in chunk], normalized=normalized, check=False).float())
    model.train(was)
    local = torch.cat(out) if out else torch.zeros(0, device=device)
    if world == 1:
        return local.cpu()
    per = math.ceil(len(items) / world)
    padded = torch.full((per,), float("nan"), device=device)
    padded[: local.numel()] = local
    gathered = accelerator.gather(padded).view(world, per)  # row r: items r, r + world, ...
    return gathered.T.reshape(-1)[: len(items)].cpu()


def evaluate_pair_set(
    model, pairset: PairSet, batch_size: int, margin: float = 0.0, accelerator=None
) -> dict:
    """Pair accuracy and mean Bradley-Terry loss of `model` on the pairs of `pairset`."""
    items = pairset.items()
    scores = score_items(model, pairset.images, items, batch_size, accelerator)
    pos = {it: i for i, it in enumerate(items)}
    b = torch.stack(
        [scores[pos[(i, p)]] for i, p in zip(pairset.better.tolist(), pairset.prompts, strict=True)]
    )
    w = torch.stack(
        [scores[pos[(i, p)]] for i, p in zip(pairset.worse.tolist(), pairset.prompts, strict=True)]
    )
    return {
        "accuracy": pair_accuracy(b, w),
        "loss": float(bt_loss(b, w, margin).mean()),
        "pairs": len(pairset),
        "prompts": len(set(pairset.prompts)),
    }


# ------------------------------------------------------------------------------------- contrastive term
def contrastive_scores(
    model: CompositionRewardModel, images: torch.Tensor, prompts: list[str], negatives: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores of every image with every prompt, `[B, B]`, and of each image with its own
    hard negatives, `[B, K]` (`negatives`: K per image, image-major). World-clip backbone: each
    image and prompt is encoded once and the head reads the fused features of each combination."""
    bb = model.backbone
    b = images.shape[0]
    img = bb.model.encode_pixels(bb.pixels(images))  # [B, D]
    txt = bb.model.encode_text(list(prompts) + list(negatives))  # [B + B K, D]
    k = len(negatives) // b
    pos, neg = txt[:b], txt[b:].view(b, k, txt.shape[-1])  # [B, D], [B, K, D]
    cols = torch.cat([pos[None].expand(b, -1, -1), neg], dim=1)  # [B, B + K, D]: image i's prompts
    f = fuse(img[:, None, :].expand_as(cols), cols)  # [B, B + K, 3D]
    p = next(model.head.parameters())
    s = model.head(f.to(p.device, p.dtype)).squeeze(-1).float()  # [B, B + K]
    return s[:, :b], s[:, b:]


def contrastive_loss(s_all: torch.Tensor, s_neg: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """The world CLIP's objective on reward scores: each prompt's cross-entropy over the batch's
    images, and each image's over [its prompt, its hard negatives, the other prompts], with scenes
    of equal key (the same meaning) masked as negatives; `loss` is the mean of the two."""
    b = s_all.shape[0]
    dev = s_all.device
    same = (keys[:, None] == keys[None, :]) & ~torch.eye(b, dtype=torch.bool, device=dev)
    s_all = s_all.masked_fill(same, -1e4)
    target = torch.arange(b, device=dev)
    t2i = F.cross_entropy(s_all.T, target)  # prompt fixed, image varied: what ReNO climbs
    i2t = F.cross_entropy(torch.cat([s_all, s_neg], dim=1), target)
    with torch.no_grad():
        acc = (s_all.T.argmax(1) == target).float().mean()
        acc_hard = (s_neg < s_all.diagonal()[:, None]).all(1).float().mean() if s_neg.numel() else acc
    return {"loss": 0.5 * (t2i + i2t), "t2i": t2i, "i2t": i2t, "accuracy": acc, "hard_accuracy": acc_hard}


class _ContrastiveBatches:
    """Clean training renders for the contrastive term: batch `step` of process `rank` is a pure
    function of ``(seed, rank, step)`` (pool draw, hard negatives, augmentation)."""

    def __init__(self, config: RewardTrainConfig, model: CompositionRewardModel, rank: int, main: bool):
        bb = model.backbone
        if getattr(bb, "kind", None) != "world-clip":
            raise ValueError(
                f"contrastive_weight > 0 needs a world-clip backbone (its contrastive objective); "
                f"this run's backbone is {getattr(bb, 'kind', type(bb).__name__)}"
            )
        self.categories = config.contrastive_categories or list_categories(config.aspect)

        root = config.pool_dir or scene_pool_dir()
        self.pool = ScenePool(root, self.categories, config.contrastive_pool_per_category)
        if self.pool.missing() and main:
            self.pool.build(workers=1, progress=config.progress)
        while self.pool.missing():  # other processes wait for the main one
            time.sleep(1.0)
        seed = _seed_of(config.seed, rank, 0xC0)
        self.make = BatchMaker(
            self.pool, bb.model, seed, config.contrastive_batch_size, config.contrastive_negatives
        )
        self.aug = WorldCLIPTrainConfig(seed=seed)  # the world CLIP's own augmentation strengths

    def __call__(self, step: int, device: torch.device) -> dict:
        batch = self.make(step)
        x = batch["images"].to(device).float() / 255.0  # [B, 3, 32, 32]
        return {**batch, "pixels": augment(x, self.aug, step)}


def _augment(x: torch.Tensor, config: RewardTrainConfig, seed: int) -> torch.Tensor:
    ns = SimpleNamespace(
        **{f.name: getattr(config, f.name) for f in fields(config) if f.name.startswith("aug_")}
    )
    ns.seed = seed
    return augment(x, ns, 0)


def plot_curves(log_path: str | Path, out_png: str | Path) -> Path | None:
    """Loss and accuracy curves of a run's ``log.jsonl`` (matplotlib, Agg); None without lines."""
    lines = read_log(log_path)
    train = [r for r in lines if r.get("event") == "train"]
    evals = [r for r in lines if r.get("event") == "eval"]
    if not train and not evals:
        return None
    loss, accuracy = [], []
    if train:
        steps = [r["step"] for r in train]
        thick = {"lw": 1.2}
        loss.append(Curve("train (mean since the last line)", steps, [r["loss"] for r in train], thick))
        accuracy.append(Curve("train batches", steps, [r["train_accuracy"] for r in train], thick))
        if "contrastive_loss" in train[-1]:
            c = [r for r in train if "contrastive_loss" in r]
            cs = [r["step"] for r in c]
            loss.append(Curve("contrastive term", cs, [r["contrastive_loss"] for r in c], {"lw": 1.0}))
            accuracy.append(
                Curve(
                    "contrastive (prompt -> image)", cs, [r["contrastive_accuracy"] for r in c], {"lw": 1.0}
                )
            )
    if evals:
        es = [r["step"] for r in evals]
        loss.append(Curve("held-out", es, [r["heldout_loss"] for r in evals], {"fmt": "o-"}))
        accuracy.append(Curve("held-out pairs", es, [r["heldout_accuracy"] for r in evals], {"fmt": "o-"}))
    panels = [
        Panel(loss, {"ylabel": "loss", "title": "Bradley-Terry loss (and contrastive term)"}),
        Panel(accuracy, {"ylabel": "pair accuracy", "title": "accuracy", "ylim": (0, 1.02)}),
    ]
    return plot_panels(panels, out_png, dpi=110)


def _build_model(config: RewardTrainConfig, model) -> CompositionRewardModel:
    torch.manual_seed(config.seed)  # the head's initial weights
    if isinstance(model, CompositionRewardModel):
        if model.aspect != config.aspect:
            raise ValueError(f"the model is a {model.aspect} model, the config trains {config.aspect}")
        model.frozen = False
        model.freeze(config.freeze_ratio)
        return model
    return CompositionRewardModel(
        model if model is not None else config.backbone,
        aspect=config.aspect,
        head_hidden=config.head_hidden,
        head_image_block=config.head_image_block,
        freeze_ratio=config.freeze_ratio,
    )


def check_world_prompts(pairs: list, source: str, backbone: str) -> None:
    """`PairsFileError` naming the first pair whose prompt is outside the world grammar (a world
    backbone's tokenizer reads only the grammar's words) and the word."""

    checked: set[str] = set()
    for p in pairs:
        if p.prompt in checked:
            continue
        checked.add(p.prompt)
        try:
            parse_prompt(p.prompt)
        except PromptError as e:
            prompt = p.prompt if len(p.prompt) <= 80 else p.prompt[:77] + "..."
            reason = str(e) if len(p.prompt) <= 80 else str(e).replace(p.prompt, prompt)
            reason = reason if len(reason) <= 300 else reason[:297] + "..."
            raise PairsFileError(
                f"{source} line {p.line}: prompt {prompt!r} is outside the world grammar, which the "
                f"{backbone} backbone reads: {reason}; use a clip: or blip: backbone for other prompts"
            ) from None


# ------------------------------------------------------------------------------------- trainer
def train_reward_model(
    config: RewardTrainConfig,
    model=None,
    resume: bool = True,
    stop_at_step: int | None = None,
) -> Path | None:
    """Train (or resume) a composition reward model; returns the final model folder
    (``run_dir/final``).

    `model`: None (built from ``config.backbone``), a `Backbone`, a `WorldCLIPModel` or a
    `CompositionRewardModel` to fine-tune (``config.freeze_ratio`` is applied to it).
    `stop_at_step` stops after that step with a checkpoint (as an interruption would) and returns
    None; SIGINT / SIGTERM also return None after a checkpoint. Running the same call again resumes.
    """
    threads = torch.get_num_threads()
    try:
        run = _RewardRun(config, model, resume)
        if not run.train(stop_at_step):
            return None
        return run.finish()
    finally:
        torch.set_num_threads(threads)


class _RewardRun:
    """One call of `train_reward_model`: set up (data, model, optimizer, run folder, resumed
    state), then `train` (the loop: steps, logs, evaluations, checkpoints), then `finish` (the
    chosen model, its normalisation and the record)."""

    def __init__(self, config: RewardTrainConfig, model, resume: bool):
        self.config = config
        self.accelerator = acc = make_accelerator(config.mixed_precision, config.device)
        self.device = acc.device
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        elif self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (2 * self.world)))

        # data and config are validated first; then the model and every image, before the run
        # folder is made: a refused run leaves nothing
        all_pairs = read_pairs(config.pairs, aspect=config.aspect)
        train_pairs = [p for p in all_pairs if p.split == "train"]
        held_pairs = [p for p in all_pairs if p.split == "heldout"]
        if not train_pairs:
            raise PairsFileError(
                f"{config.pairs}: no train pairs of aspect {config.aspect} (only held-out ones)"
            )
        self.run = RunFolder(config.run_dir)
        self.ckpt = self.run.latest_checkpoint() if resume else None
        if self.ckpt is not None:
            self.run.check_config(config.to_dict(), RUNTIME_FIELDS, ("epochs",), _config_defaults())
        self._build(model, all_pairs, train_pairs, held_pairs)
        if self.main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            if not resume:
                self.run.remove_checkpoints()
                for name in (BEST, FINAL):
                    shutil.rmtree(self.run.path / name, ignore_errors=True)
                self.run.remove_log()
            self.run.write_config(config.to_dict())
        acc.wait_for_everyone()
        self._resume()

    # ------------------------------------------------------------------------------- set-up
    def _build(self, model, all_pairs: list, train_pairs: list, held_pairs: list) -> None:
        """The model (frozen in part), the contrastive batches, the pair sets, the step counts and
        the optimizer."""
        config, acc, main = self.config, self.accelerator, self.main
        core = self.core = _build_model(config, model)
        if str(getattr(core.backbone, "kind", "")).startswith("world"):
            check_world_prompts(all_pairs, str(config.pairs), core.backbone.kind)
        if config.gradient_checkpointing:
            core.backbone.gradient_checkpointing_enable()
        image_size = int(config.image_size or core.backbone.input_size)
        core.config["image_size"] = image_size
        self.freeze_summary = core.freeze(config.freeze_ratio)
        core.to(self.device)
        core.train()
        self.contrast = (
            _ContrastiveBatches(config, core, self.rank, main) if config.contrastive_weight > 0 else None
        )
        self.train_set = PairSet(train_pairs, image_size, progress=config.progress and main)
        self.held_set = (
            PairSet(held_pairs, image_size, progress=config.progress and main) if held_pairs else None
        )

        self.n_train = len(self.train_set)
        prompts = set(self.train_set.prompts) | (set(self.held_set.prompts) if self.held_set else set())
        prompts = sorted(prompts)
        self.truncated = core.backbone.count_truncated(prompts)
        if self.truncated and main:
            warnings.warn(
                f"{self.truncated} of {len(prompts)} prompts are longer than the backbone's text window "
                "(their ends are cut off)",
                stacklevel=4,
            )
        self.batch = min(config.batch_size, self.n_train)
        if self.batch < self.world * config.grad_accum_steps:
            raise ValueError(
                f"a batch of {self.batch} pairs cannot be split over {self.world} processes x "
                f"{config.grad_accum_steps} micro-batches; use more pairs or fewer processes / micro-batches"
            )
        self.per_epoch = self.n_train // self.batch
        self.total = config.epochs * self.per_epoch
        self.warmup = round(config.warmup_ratio * self.total)
        self.head_lr = config.head_learning_rate or (
            config.learning_rate if core.config.get("head_pretrained") else HEAD_LR_FRESH
        )
        optimizer = torch.optim.AdamW(
            _param_groups(core, config.learning_rate, self.head_lr, config.weight_decay),
            lr=config.learning_rate,
            betas=config.adam_betas,
        )
        self.ddp_model, self.optimizer = acc.prepare(core, optimizer)

    def _resume(self) -> None:
        """The run's counters, evaluations and running means: fresh, or from the checkpoint."""
        self.step, self.wall, self.train_s, self.sessions = 0, 0.0, 0.0, []
        self.best: dict | None = None
        self.evals: list[dict] = []
        self.loss_avg = self.acc_avg = None
        self.c_avg: dict[str, float] = {}  # running means of the contrastive term's loss and accuracies
        if self.ckpt is not None:
            state = load_checkpoint(self.ckpt)
            self.core.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            scaler = self.accelerator.scaler
            if state.get("scaler") is not None and scaler is not None:
                scaler.load_state_dict(state["scaler"])
            self.step, self.wall, self.train_s = state["step"], state["wall_time_s"], state["train_time_s"]
            self.sessions, self.best, self.evals = state["sessions"], state["best"], state["evals"]
            self.loss_avg, self.acc_avg = state["loss_avg"], state["acc_avg"]
            self.c_avg = state.get("contrastive_avg") or {}
            if self.main:  # drop lines logged after the checkpoint
                self.run.truncate_log(self.step)
        self.hardware = hardware_info(self.device)
        self.session = new_session(self.step, self.hardware, processes=self.world)
        self.sessions = [*self.sessions, self.session]

    # ------------------------------------------------------------------------------- the loop
    def train(self, stop_at_step: int | None) -> bool:
        """Train up to `stop_at_step` (None: the end); True when the run is done (all epochs, or
        the time limit), False when it stopped early (a signal, `stop_at_step`) with a checkpoint."""
        config = self.config
        end = self.total if stop_at_step is None else min(stop_at_step, self.total)
        bar = tqdm(
            total=self.total,
            initial=self.step,
            desc=f"reward {config.aspect}",
            disable=not (config.progress and self.main),
        )
        self.perm_epoch, self.perm = -1, None
        self.sum_loss = torch.zeros((), device=self.device)
        self.sum_right = torch.zeros((), device=self.device)
        self.sum_c = torch.zeros(3, device=self.device)  # contrastive loss, accuracy, hard-negative accuracy
        self.n_logged = 0
        self.t_log, self.s_log = time.perf_counter(), self.step
        interrupted = False
        self.time_stopped = self.step < end and self.sync_flags(self.out_of_time())[0]
        try:
            with StopFlag() as flag:
                while self.step < end and not self.time_stopped:
                    self.train_step()
                    bar.update(1)
                    epoch_end = self.step % self.per_epoch == 0
                    if self.step % config.log_every == 0 or self.step == end or epoch_end:
                        self.log_train()
                        if config.progress and self.main:
                            bar.set_postfix(loss=f"{self.loss_avg:.4f}", acc=f"{self.acc_avg:.3f}")
                    if epoch_end:
                        t_eval = time.perf_counter()
                        self.evaluate(self.step)
                        self.wall += time.perf_counter() - t_eval
                        self.t_log = time.perf_counter()
                    interrupted, self.time_stopped = self.sync_flags(flag.stop, self.out_of_time())
                    self.time_stopped = self.time_stopped and self.step < self.total
                    if (
                        self.step % config.checkpoint_every == 0
                        or epoch_end
                        or self.step == end
                        or interrupted
                        or self.time_stopped
                    ):
                        self.save(self.step)
                    if interrupted:
                        break
        finally:
            bar.close()
        return not interrupted and (self.step >= self.total or self.time_stopped)

    def train_step(self) -> None:
        """One optimizer step on batch `self.step`: this process's share of its pairs, in
        micro-batches, and the contrastive term once (with the last micro-batch)."""
        config, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        epoch, pos = divmod(self.step, self.per_epoch)
        if epoch != self.perm_epoch:
            self.perm_epoch = epoch
            self.perm = np.random.default_rng([config.seed, epoch, 0xBA1]).permutation(self.n_train)
        idx = self.perm[pos * self.batch : (pos + 1) * self.batch]
        shard = np.array_split(idx, self.world)[self.rank]
        frac = (self.wall / config.time_limit_s) if config.time_limit_s else 0.0
        self.lr_mult = lr_factor(self.step, self.total, self.warmup, config.min_lr_ratio, frac)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.lr_mult
        torch.manual_seed(_seed_of(config.seed, self.step, self.rank))  # dropout
        micros = np.array_split(shard, config.grad_accum_steps)
        for j, mb in enumerate(micros):
            self._micro_step(mb, j, last=j == len(micros) - 1)
        self.n_logged += self.batch
        if config.max_grad_norm:
            acc.clip_grad_norm_(self.ddp_model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        self.wall += dt
        self.train_s += dt

    def _micro_step(self, mb: np.ndarray, j: int, last: bool) -> None:
        """Forward and backward of the pairs `mb` (gradients synchronised on the `last` one)."""
        config, acc, data, device = self.config, self.accelerator, self.train_set, self.device
        b_idx, w_idx = data.better[mb], data.worse[mb]
        prompts = [data.prompts[i] for i in mb.tolist()]
        x = torch.from_numpy(data.images[np.concatenate([b_idx, w_idx])])
        x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        if config.augment:
            x = _augment(x, config, _seed_of(config.seed, self.step, self.rank, j))
        with nullcontext() if last else acc.no_sync(self.ddp_model):
            with acc.autocast():
                s = self.ddp_model(x, prompts + prompts, normalized=False, check=False)
            sb, sw = s[: len(mb)], s[len(mb) :]
            losses = bt_loss(sb, sw, config.margin)
            loss = losses.sum() * (self.world / self.batch)
            if self.contrast is not None and last:  # once per step
                cb = self.contrast(self.step, device)
                with acc.autocast():
                    s_all, s_neg = contrastive_scores(self.core, cb["pixels"], cb["prompts"], cb["negatives"])
                c = contrastive_loss(s_all, s_neg, cb["keys"].to(device))
                loss = loss + config.contrastive_weight * c["loss"]
                self.sum_c += torch.stack([c["loss"].detach(), c["accuracy"], c["hard_accuracy"]])
            acc.backward(loss)
        self.sum_loss += losses.detach().sum()
        self.sum_right += ((sb > sw).float() + 0.5 * (sb == sw).float()).detach().sum()

    def log_train(self) -> None:
        """A training line: the means since the last line (over every process) and running means."""
        acc = self.accelerator
        totals = torch.stack([self.sum_loss, self.sum_right])
        c_tot = self.sum_c / max(1, self.step - self.s_log)
        if self.world > 1:
            totals = acc.reduce(totals, reduction="sum")
            c_tot = acc.reduce(c_tot, reduction="mean")
        loss_b, acc_b = (totals / self.n_logged).tolist()
        c_rec = {}
        if self.contrast is not None:
            names = ("contrastive_loss", "contrastive_accuracy", "contrastive_hard_accuracy")
            c_rec = dict(zip(names, c_tot.tolist(), strict=True))
            avg = self.c_avg
            self.c_avg = {k: v if k not in avg else 0.9 * avg[k] + 0.1 * v for k, v in c_rec.items()}
        self.loss_avg = loss_b if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss_b
        self.acc_avg = acc_b if self.acc_avg is None else 0.9 * self.acc_avg + 0.1 * acc_b
        now = time.perf_counter()
        self.log(
            {
                "event": "train",
                "step": self.step,
                "epoch": self.step / self.per_epoch,
                "loss": loss_b,
                "loss_avg": self.loss_avg,
                "train_accuracy": acc_b,
                "train_accuracy_avg": self.acc_avg,
                "lr": self.config.learning_rate * self.lr_mult,
                "head_lr": self.head_lr * self.lr_mult,
                "pairs_per_s": (self.step - self.s_log) * self.batch / max(1e-9, now - self.t_log),
                "wall_time_s": self.wall,
                **c_rec,
            }
        )
        self.sum_loss.zero_()
        self.sum_right.zero_()
        self.sum_c.zero_()
        self.n_logged = 0
        self.t_log, self.s_log = now, self.step

    def log(self, record: dict) -> None:
        if self.main:
            self.run.log(record)

    def evaluate(self, at_step: int) -> None:
        """Held-out pair accuracy (an "eval" line); a new best is saved to ``best/``."""
        if self.held_set is None:
            return
        config = self.config
        r = evaluate_pair_set(
            self.core, self.held_set, config.eval_batch_size, config.margin, self.accelerator
        )
        rec = {
            "event": "eval",
            "step": at_step,
            "epoch": at_step / self.per_epoch,
            "heldout_accuracy": r["accuracy"],
            "heldout_loss": r["loss"],
            "heldout_pairs": r["pairs"],
            "heldout_prompts": r["prompts"],
        }
        self.evals.append(rec)
        self.log(rec)
        best = self.best
        if best is None or (r["accuracy"], -r["loss"]) > (best["heldout_accuracy"], -best["heldout_loss"]):
            self.best = {k: rec[k] for k in ("step", "epoch", "heldout_accuracy", "heldout_loss")}
            if self.main:
                atomic_dir(self.run.path / BEST, lambda d: self.core.save_pretrained(d))
            self.accelerator.wait_for_everyone()

    def save(self, at_step: int) -> None:
        """A resumable checkpoint (written by the main process)."""
        self.session["to_step"] = at_step
        if self.main:
            scaler = self.accelerator.scaler
            state = {
                "model": self.core.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": at_step,
                "wall_time_s": self.wall,
                "train_time_s": self.train_s,
                "sessions": self.sessions,
                "best": self.best,
                "evals": self.evals,
                "loss_avg": self.loss_avg,
                "acc_avg": self.acc_avg,
                "contrastive_avg": self.c_avg,
                "config": self.config.to_dict(),
            }
            self.run.save_checkpoint(at_step, state, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def out_of_time(self) -> bool:
        return self.config.time_limit_s is not None and self.wall >= self.config.time_limit_s

    def sync_flags(self, *flags: bool) -> list[bool]:
        """The flags, true when true on any process (every process takes the same decisions)."""
        if self.world == 1:
            return [bool(f) for f in flags]
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        return [bool(v > 0) for v in self.accelerator.reduce(t, reduction="sum").tolist()]

    # ------------------------------------------------------------------------------- the end
    def finish(self) -> Path:
        """Load the chosen model (best held-out epoch, else the last step), measure its score
        normalisation on the training images, and write ``final/`` with the record."""
        config, core, step = self.config, self.core, self.step
        held_set, train_set = self.held_set, self.train_set
        if held_set is not None and (not self.evals or self.evals[-1]["step"] != step):
            self.evaluate(step)  # a time limit stopped the run between epochs
        if held_set is not None:
            _load_weights(core, self.run.path / BEST / WEIGHTS_FILE)
            selection = {"by": "heldout pair accuracy (then held-out loss)", **self.best}
        else:
            warnings.warn("no held-out pairs: the last epoch is kept (no model selection)", stacklevel=3)
            selection = {"by": "last step (no held-out pairs)", "step": step}
        t_norm = time.perf_counter()
        items = train_set.items()
        raw = score_items(core, train_set.images, items, config.eval_batch_size, self.accelerator)
        mean, std = float(raw.mean()), float(raw.std(unbiased=False))
        if not std > 0:
            std = 1.0
        core.set_normalization(
            mean,
            std,
            {
                "source": "raw scores of the train pairs' images (each image with its prompt)",
                "items": len(items),
                "images": int(len(np.unique(np.concatenate([train_set.better, train_set.worse])))),
                "pairs": self.n_train,
            },
        )
        normalization = {"mean": mean, "std": std, "seconds": round(time.perf_counter() - t_norm, 2)}
        record = self.record(selection, normalization)
        final = self.run.path / FINAL
        if self.main:
            atomic_dir(final, lambda d: core.save_pretrained(d, record=record))
            plot_curves(self.run.log_path, self.run.path / PLOT_FILE)
        self.accelerator.wait_for_everyone()
        return final

    def record(self, selection: dict, normalization: dict) -> dict:
        """The run's record (``training.json`` of the final model)."""
        config, core, step, contrast = self.config, self.core, self.step, self.contrast
        held_set, train_set = self.held_set, self.train_set
        return {
            "kind": "composition-reward",
            "aspect": config.aspect,
            "backbone": {"kind": core.backbone.kind, "source": core.backbone.source, "spec": config.backbone},
            "steps": step,
            "total_steps": self.total,
            "epochs_done": step / self.per_epoch,
            "stopped_by": "time_limit" if self.time_stopped else "epochs",
            "batch_size": self.batch,
            "processes": self.world,
            "train_pairs": self.n_train,
            "train_prompts": len(set(train_set.prompts)),
            "heldout_pairs": len(held_set) if held_set is not None else 0,
            "heldout_prompts": len(set(held_set.prompts)) if held_set is not None else 0,
            "prompts_truncated": self.truncated,
            "selection": selection,
            "evals": self.evals,
            "normalization": normalization,
            "learning_rates": {"backbone": config.learning_rate, "head": self.head_lr},
            "freeze": self.freeze_summary,
            "wall_time_s": round(self.wall, 2),
            "train_time_s": round(self.train_s, 2),
            "pairs_per_s": round(step * self.batch / max(self.train_s, 1e-9), 1) if step else None,
            "final_loss_avg": self.loss_avg,
            "contrastive": None
            if contrast is None
            else {
                "weight": config.contrastive_weight,
                "categories": contrast.categories,
                "pool_per_category": config.contrastive_pool_per_category,
                "batch_size": config.contrastive_batch_size,
                "negatives": config.contrastive_negatives,
                "final_avg": self.c_avg,
            },
            "hardware": self.hardware,
            "sessions": self.sessions,
            "versions": versions("transformers", "accelerate", "numpy"),
            "finished": utc_now(),
            "config": config.to_dict(),
        }


# ------------------------------------------------------------------------------------- export
def export_reward_model(run_or_model: str | Path, name: str, dest_root: str | Path | None = None) -> Path:
    """Write a finished run's (or model folder's) model as fp16 safetensors to
    ``weights/<name>`` of the package (or `dest_root`/<name>), loadable as
    ``create_reward("composition:<name>")``. A shipped name (``itercomp-spatial``, ...) must get a
    model of its aspect."""

    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"export name must be a plain folder name, got {name!r}")
    src = resolve_model_dir(Path(run_or_model))
    model = CompositionRewardModel(src, frozen=True)
    if name in SHIPPED and SHIPPED[name] != model.aspect:
        raise ValueError(f"{name} is the {SHIPPED[name]} model; {src} is a {model.aspect} model")
    dest = Path(dest_root or weights_root()) / name
    rec_path = src / RECORD_FILE
    record = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    record["exported"] = {"dtype": "float16", "from": str(src), "name": name}
    atomic_dir(dest, lambda d: model.save_pretrained(d, dtype=torch.float16, record=record))
    return dest
