"""Rejection-sampling fine-tuning of a world model: learn from its own samples that a judge passes.

The oracle probe of the relations and IterComp studies. It bounds what any preference method can
teach a model from its own outputs: the exact evaluator (`compalign.world.evaluator`) is a judge
no learned reward beats, so a model fine-tuned on its own evaluator-passing samples shows how much
the model can gain from them (the "headroom"), and whether what it lost can be won back (the
learnability check).

1. `sample_and_judge`: N seeds for P train prompts per category, each image judged
   (cached in a ``.npz``, so a probe can be resumed or re-run with other fine-tuning settings)
2. `passing`: the indices of the images the evaluator passes
3. `finetune_on_samples`: the denoising loss on those images with their true prompts

    gen = create_generator("world-web")
    samples = sample_and_judge(gen, RejectionSamplingConfig(), cache="runs/probe/samples.npz")
    keep = passing(samples)
    finetune_on_samples(gen.pipe, samples["images"][keep], samples["prompts"][keep].tolist(), cfg)

Only train prompts are used (`load_suite(category, "train")`); held-out prompts never reach training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compalign.io import atomic_path
from compalign.world.quality import judge_images
from compalign.world.suites import load_suite

from .config import WorldTrainConfig
from .models import build_training_scheduler
from .train import diffusion_loss

DEFAULT_CATEGORIES = [
    "color",
    "shape",
    "texture",
    "colors",
    "color_attr",
    "spatial",
    "position",
    "non_spatial",
]


@dataclass
class RejectionSamplingConfig:
    """Settings of one rejection-sampling probe."""

    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    """Categories whose train prompts are sampled."""
    prompts_per_category: int = 100
    """Train prompts per category (the suite's first ones)."""
    samples_per_prompt: int = 8
    """Seeds per prompt: 1000, 1001, ... (apart from the held-out evaluation's seeds 0-3)."""
    steps: int = 400
    """Fine-tuning steps."""
    batch_size: int = 32
    """Images per fine-tuning step."""
    learning_rate: float = 5e-5
    """AdamW learning rate (constant)."""
    balanced: bool = False
    """Draw a category uniformly, then one of its passing images (else: any passing image)."""
    train_text_encoder: bool = False
    """Fine-tune the text encoder too (else the denoiser only)."""
    seed: int = 0
    """Seed of the batches and of the denoising noise."""
    sample_batch_size: int = 128
    """Images generated at once."""

    def __post_init__(self) -> None:
        for name in (
            "prompts_per_category",
            "samples_per_prompt",
            "steps",
            "batch_size",
            "sample_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"RejectionSamplingConfig.{name} must be at least 1, got {getattr(self, name)}"
                )
        if not self.learning_rate > 0:
            raise ValueError(f"RejectionSamplingConfig.learning_rate must be > 0, got {self.learning_rate}")
        for c in self.categories:
            load_suite(c, "train")  # a clear KeyError for an unknown category


def sample_and_judge(
    generator, config: RejectionSamplingConfig, cache: str | Path | None = None, log=print
) -> dict[str, np.ndarray]:
    """Images (uint8 `[N, H, W, 3]`), prompts, categories, evaluator verdicts (`passed`) and clause
    scores of `generator` on train prompts. With `cache`, read from / written to that ``.npz``."""
    if cache is not None and Path(cache).is_file():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    from compalign.generators.generate import to_uint8

    images, prompts, cats, passed, score = [], [], [], [], []
    t0 = time.perf_counter()
    first_seed = 1000
    for c in config.categories:
        ps = load_suite(c, "train")[: config.prompts_per_category]
        items = [(p, s) for p in ps for s in range(first_seed, first_seed + config.samples_per_prompt)]
        n0 = len(passed)
        for i in range(0, len(items), config.sample_batch_size):
            chunk = items[i : i + config.sample_batch_size]
            pp = [p for p, _ in chunk]
            with torch.no_grad():
                x = generator.generate(pp, seeds=[s for _, s in chunk], batch_size=config.sample_batch_size)
            verdicts = judge_images(x, pp)
            images.append(to_uint8(x))
            prompts += pp
            cats += [c] * len(pp)
            passed += [bool(a) for a, _ in verdicts]
            score += [float(b) for _, b in verdicts]
        log(f"{c}: {np.mean(passed[n0:]):.3f} of {len(passed) - n0} pass ({time.perf_counter() - t0:.0f} s)")
    out = {
        "images": np.concatenate(images),  # [N, H, W, 3] uint8
        "prompts": np.array(prompts),
        "cats": np.array(cats),
        "passed": np.array(passed),
        "score": np.array(score),
    }
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(cache)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **out)  # a file object: savez would add ".npz" to a name
    return out


def passing(samples: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the samples the evaluator passes."""
    return np.flatnonzero(samples["passed"])


def finetune_on_samples(
    pipe,
    images: np.ndarray,
    prompts: list[str],
    config: RejectionSamplingConfig,
    categories: np.ndarray | None = None,
    log=print,
    log_every: int = 50,
    extra: Callable[[int], dict] | None = None,
) -> list[float]:
    """Fine-tune `pipe` in place with the denoising loss on `images` (uint8 `[N, H, W, 3]`) and their
    `prompts`; `categories` (one per image) for ``balanced`` draws. `extra(step)`, when given, adds
    examples to each batch (``images`` `[b, 3, H, W]` in [-1, 1], ``prompts``; e.g. exact renders
    of a scene pool) beside the `config.batch_size` samples. Returns the loss per step."""
    if len(images) == 0:
        raise ValueError("finetune_on_samples: no images to fine-tune on (no sample passed the judge)")
    if len(images) != len(prompts):
        raise ValueError(f"finetune_on_samples: {len(images)} images but {len(prompts)} prompts")
    unet, te = pipe.unet, pipe.text_encoder
    model = torch.nn.ModuleDict({"unet": unet, "text_encoder": te})
    trained = model if config.train_text_encoder else unet
    trained.requires_grad_(True)
    trained.train()
    opt = torch.optim.AdamW(trained.parameters(), lr=config.learning_rate, weight_decay=0.0)
    train_sched = build_training_scheduler(pipe.scheduler.config)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N,3,H,W]
    groups = None
    if config.balanced:
        if categories is None:
            raise ValueError("finetune_on_samples: balanced draws need the images' categories")
        groups = [torch.from_numpy(np.flatnonzero(categories == c)) for c in np.unique(categories)]
    loss_cfg = WorldTrainConfig(name="rejection-sampling", seed=config.seed, cond_dropout=0.1)
    g = torch.Generator().manual_seed(config.seed)
    losses, t0 = [], time.perf_counter()
    for step in range(config.steps):
        # 1. a batch of passing samples
        if groups is not None:
            cs = torch.randint(len(groups), (config.batch_size,), generator=g).tolist()
            idx = torch.stack([groups[c][torch.randint(len(groups[c]), (1,), generator=g)][0] for c in cs])
        else:
            idx = torch.randint(len(x), (config.batch_size,), generator=g)
        batch = {"images": x[idx], "prompts": [prompts[i] for i in idx.tolist()]}
        if extra is not None:
            more = extra(step)
            batch = {
                "images": torch.cat([batch["images"], more["images"]]),
                "prompts": batch["prompts"] + more["prompts"],
            }
        # 2. the denoising loss of the batch, 3. one optimizer step
        loss = diffusion_loss(loss_cfg, model, pipe, train_sched, batch, step, "cpu")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and step % log_every == 0:
            log(f"step {step} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    trained.eval()
    trained.requires_grad_(False)
    return losses
