"""Reward-ranked fine-tuning (RAFT, Dong et al. 2023) of a world model on a gallery's best images.

IterComp's feedback learning (ReFL, `train.py`) moves the base along the gradient of its reward
models. RAFT uses the same learned rewards another way: they *choose*, per train prompt, the best
of the gallery's images (every model's, the specialists' included) and optionally of the base's own
new samples, and the base learns those images with its ordinary denoising loss. The gallery's
strongest models then teach the base what they know, with the rewards as the only judge (the
exact evaluator's verdicts are recorded for the report, never read by the selection).

1. candidates: each aspect's gallery records of *train* prompts (held-out prompts never), every
   model's image, plus `samples_per_prompt` new samples of the base (seeds 2000, 2001, ...)
2. scores: the aspect's reward model scores each candidate against its prompt
3. selection: the `top_k` best candidates of each prompt
4. fine-tuning: the denoising loss on the selected images with their prompts, batches balanced over
   the aspects (`compalign.generators.world.rejection_sampling.finetune_on_samples`), each with
   `reg_batch_size` scenes of the regulariser pool captioned as the base learnt (its own
   pre-training data, as the ReFL regulariser)
5. output: ``<run>/final`` (the pipeline and ``training.json``: the selection per aspect, the loss)

A run is short (minutes on a CPU) and writes its result at the end only: an interrupted run starts
again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cache import scene_pool_dir
from ..gallery.format import load_gallery
from ..generators import create_generator
from ..generators.generate import to_uint8
from ..generators.world.data import ScenePool
from ..generators.world.generator import RECORD_FILE, WorldGenerator, quiet_loading
from ..generators.world.rejection_sampling import RejectionSamplingConfig, finetune_on_samples
from ..pairs.make import prompt_split
from ..rewards.registry import create_reward
from ..training.run_folder import atomic_dir
from ..world.quality import judge_images
from ..world.suites import CATEGORY_ASPECT
from .config import RaftConfig

FIRST_SAMPLE_SEED = 2000
"""Seeds of the base's own candidate samples: apart from galleries' (0...) and evaluations' (0-3)."""


def gather_candidates(config: RaftConfig, gen: WorldGenerator, log=print) -> list[dict]:
    """Step 1: per gallery (aspect), the train-prompt records' images, and the base's new samples.
    Each candidate: aspect, prompt, source (model name or ``base``), image (uint8 ``[H, W, 3]``)."""
    out = []
    for folder in config.galleries:
        g = load_gallery(folder, check_images=True)
        aspect = g.aspect
        if aspect not in config.rewards:
            raise ValueError(f"gallery {folder} is of aspect {aspect!r}, which has no reward in `rewards`")
        recs = [r for r in g.records if prompt_split(r.prompt) == "train"]
        for r in recs:
            for m in g.models:
                if m in r.images:
                    with Image.open(g.image_file(r, m)) as im:
                        image = np.asarray(im.convert("RGB").resize((gen.resolution,) * 2))
                    out.append({"aspect": aspect, "prompt": r.prompt, "source": m, "image": image})
        prompts = sorted({r.prompt for r in recs})
        if config.samples_per_prompt and prompts:
            items = [(p, FIRST_SAMPLE_SEED + s) for p in prompts for s in range(config.samples_per_prompt)]
            for i in range(0, len(items), 64):
                chunk = items[i : i + 64]
                with torch.no_grad():
                    x = gen.generate([p for p, _ in chunk], seeds=[s for _, s in chunk])
                for (p, _), image in zip(chunk, to_uint8(x), strict=True):
                    out.append({"aspect": aspect, "prompt": p, "source": "base", "image": image})
        log(f"  {aspect}: {len(prompts)} train prompts, {sum(c['aspect'] == aspect for c in out)} candidates")
    return out


def score_candidates(config: RaftConfig, candidates: list[dict]) -> np.ndarray:
    """Step 2: each candidate's score by its aspect's reward model."""
    scores = np.zeros(len(candidates))
    for aspect, spec in config.rewards.items():
        idx = [i for i, c in enumerate(candidates) if c["aspect"] == aspect]
        if not idx:
            continue
        reward = create_reward(spec).to("cpu").eval()
        for j in range(0, len(idx), 128):
            part = idx[j : j + 128]
            x = (
                torch.from_numpy(np.stack([candidates[i]["image"] for i in part])).permute(0, 3, 1, 2).float()
                / 255
            )
            with torch.no_grad():
                scores[part] = reward(x, [candidates[i]["prompt"] for i in part]).float().numpy()
    return scores


def select_top_k(candidates: list[dict], scores: np.ndarray, k: int) -> list[int]:
    """Step 3: the indices of the `k` best-scored candidates of each (aspect, prompt); ties keep
    the earlier candidate."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault((c["aspect"], c["prompt"]), []).append(i)
    keep = []
    for idx in groups.values():
        order = sorted(idx, key=lambda i: (-scores[i], i))
        keep += order[:k]
    return sorted(keep)


def selection_summary(candidates: list[dict], scores: np.ndarray, keep: list[int]) -> dict:
    """Per aspect: counts, mean score of all vs selected candidates, which sources were chosen and
    the exact evaluator's pass rate of all vs selected images (for the report only)."""
    verdicts = np.array([bool(v[0]) for v in judge_images(np.stack([c["image"] for c in candidates]),
                                                         [c["prompt"] for c in candidates])])  # fmt: skip
    chosen = np.zeros(len(candidates), bool)
    chosen[keep] = True
    out = {}
    for aspect in sorted({c["aspect"] for c in candidates}):
        m = np.array([c["aspect"] == aspect for c in candidates])
        sources: dict[str, int] = {}
        for i in np.flatnonzero(m & chosen):
            sources[candidates[i]["source"]] = sources.get(candidates[i]["source"], 0) + 1
        out[aspect] = {
            "prompts": len({c["prompt"] for c in candidates if c["aspect"] == aspect}),
            "candidates": int(m.sum()),
            "selected": int((m & chosen).sum()),
            "reward_all": float(scores[m].mean()),
            "reward_selected": float(scores[m & chosen].mean()),
            "evaluator_pass_all": float(verdicts[m].mean()),
            "evaluator_pass_selected": float(verdicts[m & chosen].mean()),
            "selected_by_source": dict(sorted(sources.items())),
        }
    return out


def train_raft(
    config: RaftConfig,
    log=print,
    scorer: Callable[[RaftConfig, list[dict]], Sequence[float] | np.ndarray] = score_candidates,
) -> Path:
    """Run RAFT (see the module doc); the final pipeline's folder. `scorer(config, candidates)`
    scores the candidates for the selection (default: the aspects' reward models); probes replace
    it (`scripts/probe_raft_oracle.py` selects by the exact evaluator to bound what better rewards
    would give)."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        gen = create_generator(config.base, device="cpu", dtype=torch.float32)
        if not isinstance(gen, WorldGenerator):
            raise ValueError(f"RAFT fine-tunes world models; {config.base!r} is not one")
        # 1. candidates, 2. scores, 3. selection
        candidates = gather_candidates(config, gen, log)
        if not candidates:
            raise ValueError("RAFT: the galleries have no image of a train prompt")
        scores = np.asarray(scorer(config, candidates), dtype=float)
        keep = select_top_k(candidates, scores, config.top_k)
        summary = selection_summary(candidates, scores, keep)
        for a, v in summary.items():
            log(
                f"  {a}: {v['selected']} of {v['candidates']} selected, reward {v['reward_all']:.3f} -> "
                f"{v['reward_selected']:.3f}, sources {v['selected_by_source']}"
            )
        # 4. fine-tuning with the regulariser's scenes in every batch
        captions = config.reg_captions or gen.training_captions or "exact"
        extra = None
        if config.reg_batch_size:
            cats = [c for c, a in CATEGORY_ASPECT.items() if a in config.rewards]
            pool = ScenePool(
                config.pool_dir or scene_pool_dir(), cats, config.pool_per_category, config.pool_shard_size,
                config.data_seed,
            )  # fmt: skip
            pool.build(workers=1, progress=config.progress)

            def extra(step: int) -> dict:
                return pool.batch(config.seed, step, config.reg_batch_size, captions=captions)

        rs = RejectionSamplingConfig(
            steps=config.max_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            balanced=True,
            train_text_encoder=config.train_text_encoder,
            seed=config.seed,
        )
        torch.manual_seed(config.seed)
        losses = finetune_on_samples(
            gen.pipe,
            np.stack([candidates[i]["image"] for i in keep]),
            [candidates[i]["prompt"] for i in keep],
            rs,
            categories=np.array([candidates[i]["aspect"] for i in keep]),
            log=log if config.progress else (lambda *_: None),
            extra=extra,
        )
    finally:
        torch.set_num_threads(threads)
    # 5. the final pipeline and its record
    record = {
        "name": config.name,
        "mode": "raft",
        "base": config.base,
        "steps": config.max_steps,
        "captions": captions,  # the caption preset of this model's training data (the next run's)
        "selection": summary,
        "scorer": getattr(scorer, "__name__", str(scorer)),
        "loss_first_last": {
            "first": float(np.mean(losses[:20])),
            "last": float(np.mean(losses[-20:])),
        },
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "config": config.to_dict(),
    }

    def write(d: Path) -> None:
        with quiet_loading():
            gen.pipe.save_pretrained(d)
        (d / RECORD_FILE).write_text(json.dumps(record, indent=2))

    final = config.run_dir / "final"
    final.parent.mkdir(parents=True, exist_ok=True)
    atomic_dir(final, write)
    log(f"  RAFT: {config.max_steps} steps on {len(keep)} images in {record['wall_time_s']:.0f} s -> {final}")
    return final
