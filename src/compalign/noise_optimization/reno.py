"""ReNO: reward-based noise optimization of a one-step generator (Eyring et al., NeurIPS 2024).

The initial noise `z` of a differentiable generator `G` is optimised by gradient descent on

    L(z) = sum_k w_k * (c_k - r_k(G(z, prompt), prompt))  +  lambda * R(z)

where `r_k` are rewards (`c_k - r_k` is each reward's bounded loss, `Reward.loss`) and `R` is the
negative log-likelihood of ||z|| under a chi distribution with d = numel(z) degrees of freedom,
which keeps `z` a typical Gaussian sample: `R(z) = 0.5 ||z||^2 - (d - 1) log ||z||` (fp32).

Per iteration (the paper's loop, as in its official code):
    1. image = G(z)                            one generator call, graph kept
    2. rewards of the image (+ benchmark rewards, without gradient)
    3. keep the image if its reward loss is the best so far (per sample: best over the trajectory)
    4. stop after the last evaluation (no optimizer step after it)
    5. backward, clip each sample's gradient norm to `grad_clip`, optimizer step

Everything is batched: B (prompt, seed) samples are optimised together, each with its own
reward loss, best image and early stop; SGD and Adam act per element, so a sample's trajectory is
the one it would have alone (L-BFGS couples the batch through its line search; use batch 1 there).

`search="best-of-n"` is the comparison at equal generator calls: each iteration draws fresh noise
from the sample's seed stream and keeps the best image ("image select" in the ReNO code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..generators.base import Generator, noise_for_seeds
from ..rewards.objective import WeightedReward
from .memory import resolve_auto

__all__ = ["ReNOConfig", "ReNOResult", "WeightedReward", "chi_regularizer", "optimize_noise"]

OPTIMIZERS = ("sgd", "adam", "lbfgs")
SEARCHES = ("reno", "best-of-n", "none")


@dataclass
class ReNOConfig:
    """Settings of one noise-optimization run (defaults: the ReNO paper's)."""

    iterations: int = 50
    """Generator evaluations per sample (the optimizer steps are one fewer)."""
    lr: float = 5.0
    """Learning rate on the noise (the paper: 5; 10 advised for Hyper-SD)."""
    optimizer: str = "sgd"
    """``sgd`` (momentum, Nesterov), ``adam`` (eps 1e-2) or ``lbfgs``."""
    momentum: float = 0.9
    """SGD momentum (Nesterov)."""
    grad_clip: float | None = 0.1
    """Clip each sample's noise-gradient norm to this (None: no clipping)."""
    reg_weight: float = 0.01
    """Weight of the chi-distribution noise-norm regulariser (0: off)."""
    search: str = "reno"
    """``reno`` (gradient ascent on the rewards), ``best-of-n`` (fresh noise every iteration,
    keep the best: same number of generator calls) or ``none`` (the initial image only)."""
    early_stop_patience: int | None = None
    """Stop a sample once its best reward loss has not improved for this many iterations."""
    early_stop_loss: float | None = None
    """Stop a sample once its reward loss is at or below this value."""
    keep_all_images: bool = False
    """Return every iteration's images (memory: iterations x batch images, on the CPU)."""
    progress: bool = True
    """Show a progress bar over the iterations."""
    seed_stride: int = 1_000_003
    """``best-of-n``: candidate `i` of a sample with seed `s` uses seed ``s + i * seed_stride``."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


@dataclass
class ReNOResult:
    """What a run returns (per sample b of the batch)."""

    best_images: torch.Tensor
    """`[B, 3, H, W]` in [0, 1] (CPU): the image with the lowest reward loss of the trajectory."""
    initial_images: torch.Tensor
    """`[B, 3, H, W]`: the image of the initial noise (iteration 0)."""
    best_iteration: list[int]
    best_loss: list[float]
    initial_loss: list[float]
    history: list[dict] = field(default_factory=list)
    """One entry per iteration: ``{"iteration", "loss": [B], "reg": [B], "rewards": {name: [B]},
    "active": [B]}`` (rewards are scores, higher is better), plus ``"grad_norm": [B]`` (each
    sample's noise-gradient norm before clipping) on iterations followed by an optimizer step."""
    iterations_run: list[int] = field(default_factory=list)
    """Generator evaluations each sample used (fewer than `iterations` after an early stop)."""
    all_images: list[torch.Tensor] | None = None
    best_noise: torch.Tensor | None = None
    checkpointed: list[str] = field(default_factory=list)
    """Generator components that recomputed their activations in the backward pass."""

    def reward_at_best(self, name: str) -> list[float]:
        return [self.history[it]["rewards"][name][b] for b, it in enumerate(self.best_iteration)]


def chi_regularizer(noise: torch.Tensor) -> torch.Tensor:
    """`[B]`: negative log-likelihood (up to a constant) of each sample's noise norm under the chi
    distribution with d = numel(sample) degrees of freedom: ``0.5 r^2 - (d - 1) log r``."""
    z = noise.float().flatten(1)
    d = z.shape[1]
    r = z.norm(dim=1)
    return 0.5 * r.pow(2) - (d - 1) * torch.log(r)


def _make_optimizer(config: ReNOConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, eps=1e-2)
    return torch.optim.LBFGS(params, lr=config.lr, max_iter=1, history_size=10)


def _clip_per_sample(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # [B]
    scale = (max_norm / norms).clamp(max=1.0)
    return grad * scale.view(-1, *([1] * (grad.ndim - 1)))


def optimize_noise(
    generator: Generator,
    prompts: Sequence[str],
    rewards: Sequence[WeightedReward],
    seeds: Sequence[int],
    config: ReNOConfig | None = None,
    callback: Callable[[int, torch.Tensor, dict], None] | None = None,
    **gen_settings,
) -> ReNOResult:
    """Optimise the initial noise of `generator` for each (prompt, seed) of the batch.

    `callback(iteration, images, record)` is called after every evaluation (e.g. to save images).
    """
    config = config or ReNOConfig()
    prompts = list(prompts)
    seeds = [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; need one seed per prompt")
    if not prompts:
        raise ValueError("no prompts to optimise")
    if config.search == "reno" and not generator.differentiable:
        raise ValueError(
            f"generator {generator.name!r} is not differentiable (more than 2 sampling steps); "
            "ReNO needs a one- or two-step generator (or use --search best-of-n)"
        )
    optimized = [r for r in rewards if r.optimize and r.weight != 0]
    if not optimized:
        raise ValueError("no reward to optimise: give at least one reward with a non-zero weight")
    b = len(prompts)
    shape = generator.noise_shape(1)[1:]
    device, dtype = generator.device, generator.dtype

    # 1. the initial noise (one per seed, drawn on the CPU: the same for any batch/device)
    noise = noise_for_seeds(seeds, shape).to(device=device, dtype=torch.float32)
    noise.requires_grad_(config.search == "reno")
    optimizer = _make_optimizer(config, [noise]) if config.search == "reno" else None
    if config.search == "reno" and getattr(generator, "checkpoint_mode", "off") == "auto":
        resolve_auto(generator, optimized, prompts, noise)

    best_loss = torch.full((b,), math.inf)
    best_iter = [0] * b
    best_images: torch.Tensor | None = None
    best_noise = noise.detach().clone().cpu()
    since_best = torch.zeros(b, dtype=torch.long)
    active = torch.ones(b, dtype=torch.bool)
    iterations_run = [0] * b
    history: list[dict] = []
    all_images: list[torch.Tensor] | None = [] if config.keep_all_images else None
    initial_images, initial_loss = None, None
    n_iter = 1 if config.search == "none" else config.iterations

    bar = tqdm(range(n_iter), desc=config.search, disable=not config.progress, dynamic_ncols=True)
    for it in bar:
        # 2. the current noise of every sample (best-of-n: fresh candidates)
        if config.search == "best-of-n" and it > 0:
            cand = [s + it * config.seed_stride for s in seeds]
            z = noise_for_seeds(cand, shape).to(device=device, dtype=torch.float32)
        else:
            z = noise
        grad_on = config.search == "reno" and it < n_iter - 1

        with torch.set_grad_enabled(grad_on):
            images = generator.generate_from_noise(z.to(dtype), prompts, **gen_settings).float()
            scores, reward_loss = {}, torch.zeros(b, device=images.device)
            for r in rewards:
                if r.optimize and r.weight != 0:
                    score = r.reward(images, prompts).float()
                    reward_loss = reward_loss + r.weight * (r.offset - score)
                else:
                    with torch.no_grad():
                        score = r.reward(images, prompts).float()
                scores[r.name] = score.detach()
            reg = chi_regularizer(z) if config.reg_weight else torch.zeros(b, device=images.device)

        # 3. best-image tracking on the reward loss (the regulariser is not part of "best")
        loss_cpu = reward_loss.detach().float().cpu()
        img_cpu = images.detach().float().clamp(0, 1).cpu()
        if it == 0:
            initial_images, initial_loss = img_cpu.clone(), loss_cpu.tolist()
            best_images = img_cpu.clone()
        improved = (loss_cpu < best_loss) & active
        if improved.any():
            best_images[improved] = img_cpu[improved]
            best_noise[improved] = z.detach().float().cpu()[improved]
            best_loss = torch.where(improved, loss_cpu, best_loss)
            for i in improved.nonzero().flatten().tolist():
                best_iter[i] = it
        since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
        for i in active.nonzero().flatten().tolist():
            iterations_run[i] = it + 1
        record = {
            "iteration": it,
            "loss": loss_cpu.tolist(),
            "reg": reg.detach().float().cpu().tolist(),
            "rewards": {k: v.detach().cpu().tolist() for k, v in scores.items()},
            "active": active.tolist(),
        }
        history.append(record)
        if all_images is not None:
            all_images.append(img_cpu)
        if callback is not None:
            callback(it, img_cpu, record)
        bar.set_postfix(loss=f"{float(best_loss.mean()):.4f}", active=int(active.sum()))

        # early stops (per sample)
        if config.early_stop_patience is not None:
            active &= since_best < config.early_stop_patience
        if config.early_stop_loss is not None:
            active &= best_loss > config.early_stop_loss
        if not active.any():
            break

        # 4. no optimizer step after the last evaluation
        if not grad_on:
            continue

        # 5. backward, per-sample clipping, step (finished samples frozen)
        total = (reward_loss + config.reg_weight * reg).sum()

        optimizer.zero_grad(set_to_none=True)
        total.backward()
        g = noise.grad
        record["grad_norm"] = g.detach().flatten(1).norm(dim=1).float().cpu().tolist()  # before clipping
        if config.grad_clip is not None:
            g = _clip_per_sample(g, config.grad_clip)
        noise.grad = g * active.to(g.device).view(-1, *([1] * (g.ndim - 1)))
        if config.optimizer == "lbfgs":
            # one L-BFGS update from the gradient just computed (max_iter 1, no line search: the
            # closure is evaluated exactly once, so it returns the loss already computed)
            optimizer.step(lambda total=total: total.detach())
        else:
            optimizer.step()
    bar.close()

    return ReNOResult(
        best_images=best_images,
        initial_images=initial_images,
        best_iteration=best_iter,
        best_loss=best_loss.tolist(),
        initial_loss=initial_loss,
        history=history,
        iterations_run=iterations_run,
        all_images=all_images,
        best_noise=best_noise,
        checkpointed=list(getattr(generator, "checkpointed", ())),
    )
