"""Tiny factories shared by the tests: models, pipelines, configs and galleries small enough to build,
train and run on a CPU in seconds.

- world: `tiny_arch`, `tiny_pipeline` (a random `WorldPipeline`), `tiny_config` (a `WorldTrainConfig`);
- world CLIP: `TINY_WORLD_CLIP`, `tiny_world_clip`;
- diffusers: random pipelines of the real classes (`build_sd`, ..., `BUILDERS`) with tokenizers written
  in code, so nothing is downloaded;
- rewards: `Redness`, a differentiable reward of known sign; tiny CLIP and ImageReward checkpoints
  written the way the real ones are distributed (`write_clip_folder`, `write_image_reward`);
- galleries: `build_gallery`, a hand-made gallery whose images the evaluator knows;
- scripts: `load_script`, a module of the repository's ``scripts/`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from compalign.gallery.format import Gallery, Record, image_path, new_meta
from compalign.generators.world.config import WorldTrainConfig
from compalign.generators.world.models import WorldArch, build_components
from compalign.generators.world.pipeline import WorldPipeline
from compalign.io import atomic_save_image
from compalign.rewards.base import Reward
from compalign.rewards.real.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from compalign.rewards.world_clip.model import WorldCLIPArch, WorldCLIPModel
from compalign.world.suites import load_suite

# ---------------------------------------------------------------------------------------------------
# world generator

TINY_ARCH = dict(
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    text_hidden_size=32,
    text_layers=1,
    text_heads=2,
    sample_steps=3,
    guidance_scale=2.0,
)
"""A tiny `WorldArch`: two UNet levels, one text layer, 3 sampler steps."""


def tiny_arch(**kw) -> WorldArch:
    return WorldArch(**{**TINY_ARCH, **kw})


def tiny_pipeline(seed: int = 0, steps: int | None = None, **arch_kw) -> WorldPipeline:
    """A random tiny `WorldPipeline` (seeded); `steps` sets its default sampler steps."""
    torch.manual_seed(seed)
    arch = tiny_arch(**arch_kw)
    pipe = WorldPipeline(
        **build_components(arch),
        patch_size=arch.patch_size,
        default_steps=steps or arch.sample_steps,
        default_guidance_scale=arch.guidance_scale,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_config(tmp_path: Path, pool_dir: Path | str | None = None, **kw) -> WorldTrainConfig:
    """A `WorldTrainConfig` of the tiny arch: 4 steps of batch 4 on a pool of 2 x 8 scenes."""
    base = dict(
        name="tiny",
        output_dir=str(tmp_path / "run"),
        data_source="pool",
        categories=["colors", "spatial"],
        pool_per_category=8,
        pool_shard_size=4,
        pool_dir=str(pool_dir or tmp_path / "pool"),
        arch=tiny_arch(),
        max_steps=4,
        batch_size=4,
        warmup_steps=1,
        checkpoint_every=2,
        log_every=1,
        num_workers=0,
        num_threads=1,
        device="cpu",
        progress=False,
    )
    base.update(kw)
    return WorldTrainConfig(**base)


def fixed_batch_losses(
    config: WorldTrainConfig, pipe: WorldPipeline, batch: dict, steps: int = 12
) -> list[float]:
    """Losses of `steps` Adam steps on one batch with the same noise and timestep (can the model fit it?)."""
    from compalign.generators.world.models import build_training_scheduler
    from compalign.generators.world.train import diffusion_loss

    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    sched = build_training_scheduler(pipe.scheduler.config)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = diffusion_loss(config, model, pipe, sched, batch, step=0)  # same noise, same t
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def tiny_arch_options() -> list[str]:
    """`--set arch.KEY=VALUE` options giving a preset the tiny network (its sampler kept)."""
    out = []
    for key in ("block_out_channels", "attention_levels", "text_hidden_size", "text_layers", "text_heads"):
        out += ["--set", f"arch.{key}={json.dumps(TINY_ARCH[key], separators=(',', ':'))}"]
    return out


# ---------------------------------------------------------------------------------------------------
# world CLIP

TINY_WORLD_CLIP = dict(
    vision_hidden=32,
    vision_layers=4,
    vision_heads=2,
    vision_mlp=64,
    text_hidden=32,
    text_layers=3,
    text_heads=2,
    text_mlp=64,
    projection_dim=32,
)
"""A tiny `WorldCLIPArch` (4 vision and 3 text layers of width 32)."""


def tiny_world_clip_arch(**kw) -> WorldCLIPArch:
    return WorldCLIPArch(**{**TINY_WORLD_CLIP, **kw})


def tiny_world_clip(seed: int = 0, **kw) -> WorldCLIPModel:
    """A random tiny `WorldCLIPModel` (seeded)."""
    return WorldCLIPModel.from_arch(tiny_world_clip_arch(**kw), seed=seed)


# ---------------------------------------------------------------------------------------------------
# rewards


class Redness(Reward):
    """A differentiable test reward: mean of R - (G + B) / 2, in [-1, 1] (higher = redder image)."""

    name = "test-redness"
    loss_offset = 1.0

    def forward(self, images, prompts):
        return (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).mean(dim=(1, 2)).float()


# ---------------------------------------------------------------------------------------------------
# diffusers pipelines of the real classes

SIZE = 32  # pixels: every tiny VAE has a scale factor of 2; the real rewards' native image size


def clip_tokenizer() -> CLIPTokenizer:
    """Character-level CLIP BPE (no merges): every letter is a token."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    """A Unigram T5 tokenizer over single characters (works offline)."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_text(tok: CLIPTokenizer, projection: bool = False, hidden: int = 32):
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def t5_text(tok: T5Tokenizer, d_model: int = 32) -> T5EncoderModel:
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def vae(**kw) -> AutoencoderKL:
    base = dict(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=SIZE,
    )
    return AutoencoderKL(**{**base, **kw})


def sd_unet(**kw) -> UNet2DConditionModel:
    base = dict(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    return UNet2DConditionModel(**{**base, **kw})


def sdxl_unet() -> UNet2DConditionModel:
    return sd_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=8 * 6 + 32,
        cross_attention_dim=64,
    )


SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def build_sd():
    tok = clip_tokenizer()
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip_text(tok),
        tokenizer=tok,
        unet=sd_unet(),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="trailing"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl():
    tok = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip_text(tok),
        text_encoder_2=clip_text(tok, projection=True),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=sdxl_unet(),
        scheduler=EulerDiscreteScheduler(**SD_BETAS, steps_offset=1),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_pixart():
    tok = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=SIZE // 2,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        tokenizer=tok,
        text_encoder=t5_text(tok),
        vae=vae(),
        transformer=transformer,
        scheduler=DDPMScheduler(beta_schedule="linear", clip_sample=False),
    )


def build_flux(guidance: bool):
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance,
        axes_dims_rope=[4, 4, 8],
    )
    sched = (
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
        if guidance
        else FlowMatchEulerDiscreteScheduler(shift=1.0)
    )
    return FluxPipeline(
        scheduler=sched,
        vae=vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text(tok),
        tokenizer=tok,
        text_encoder_2=t5_text(tok2),
        tokenizer_2=tok2,
        transformer=transformer,
    )


def build_sd3():
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text(tok, projection=True),
        tokenizer=tok,
        text_encoder_2=clip_text(tok, projection=True),
        tokenizer_2=tok,
        text_encoder_3=t5_text(tok3),
        tokenizer_3=tok3,
    )


BUILDERS = {
    "sd": build_sd,
    "sdxl": build_sdxl,
    "pixart": build_pixart,
    "flux-schnell": lambda: build_flux(guidance=False),
    "flux-dev": lambda: build_flux(guidance=True),
    "sd3": build_sd3,
}


# ---------------------------------------------------------------------------------------------------
# real rewards: tiny checkpoints of the real architectures, written the way they are distributed

LONG_PROMPT = " ".join(["the green dog"] * 20)  # longer than every text window: truncated


def write_clip_tokenizer(folder):
    """A tiny CLIP BPE tokenizer (characters + a few merges; <|startoftext|>, <|endoftext|> last, so
    the EOT token has the largest id as in CLIP)."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    merges = ["t h", "th e</w>", "r e", "re d</w>"]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tok.save_pretrained(folder)
    return tok


BERT_WORDS = "a the red blue green cube cubes ball balls cat dog two left of on and".split()


def write_bert_vocab(folder):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, "##s"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return len(vocab)


def clip_processor(size=SIZE, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(mean),
        image_std=list(std),
        resample=3,
    )


def tiny_clip_model(tok, seed, projection_dim=16, max_positions=24):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": max_positions,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": SIZE,
            "patch_size": 8,
        },
        projection_dim=projection_dim,
    )
    return CLIPModel(cfg).eval()


def write_clip_folder(d: Path, seed: int = 0) -> Path:
    """A transformers CLIP folder (model + tokenizer + preprocessor), like the LAION hub repo."""
    tok = write_clip_tokenizer(d)
    tiny_clip_model(tok, seed=seed).save_pretrained(d)
    clip_processor().save_pretrained(d)
    return d


IR_VISION = {"width": 128, "layers": 2, "patch": 8, "heads": 2}  # heads = width // 64, as BLIP's ViTs
IR_TEXT = {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 64, "max_pos": 40}


def image_reward_state_dict(vocab_size, seed):
    """Random weights in the official ``ImageReward.pt`` key layout (BLIP ViT + med BERT + MLP)."""
    g = torch.Generator().manual_seed(seed)
    w, p, h, inter = IR_VISION["width"], IR_VISION["patch"], IR_TEXT["hidden"], IR_TEXT["intermediate"]
    grid = SIZE // p
    sd = {}

    def n(*shape, std):
        return torch.randn(*shape, generator=g) * std

    def lin(key, out_f, in_f):
        sd[key + ".weight"], sd[key + ".bias"] = n(out_f, in_f, std=in_f**-0.5), n(out_f, std=0.02)

    def ln(key, d):
        sd[key + ".weight"], sd[key + ".bias"] = 1 + n(d, std=0.1), n(d, std=0.02)

    v = "blip.visual_encoder."
    sd[v + "cls_token"] = n(1, 1, w, std=0.5)
    sd[v + "pos_embed"] = n(1, grid * grid + 1, w, std=0.5)
    sd[v + "patch_embed.proj.weight"] = n(w, 3, p, p, std=(3 * p * p) ** -0.5)
    sd[v + "patch_embed.proj.bias"] = n(w, std=0.02)
    for i in range(IR_VISION["layers"]):
        b = f"{v}blocks.{i}."
        ln(b + "norm1", w)
        lin(b + "attn.qkv", 3 * w, w)
        lin(b + "attn.proj", w, w)
        ln(b + "norm2", w)
        lin(b + "mlp.fc1", 4 * w, w)
        lin(b + "mlp.fc2", w, 4 * w)
    ln(v + "norm", w)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = n(vocab_size, h, std=1.0)
    sd[t + "embeddings.position_embeddings.weight"] = n(IR_TEXT["max_pos"], h, std=0.3)
    sd[t + "embeddings.position_ids"] = torch.arange(IR_TEXT["max_pos"]).unsqueeze(0)
    ln(t + "embeddings.LayerNorm", h)
    for i in range(IR_TEXT["layers"]):
        layer = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", h), ("crossattention", w)):
            lin(layer + att + ".self.query", h, h)
            lin(layer + att + ".self.key", h, kv_in)
            lin(layer + att + ".self.value", h, kv_in)
            lin(layer + att + ".output.dense", h, h)
            ln(layer + att + ".output.LayerNorm", h)
        lin(layer + "intermediate.dense", inter, h)
        lin(layer + "output.dense", h, inter)
        ln(layer + "output.LayerNorm", h)
    lin("blip.vision_proj", 256, w)
    lin("blip.text_proj", 256, h)
    for idx, (o, i) in zip(
        (0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16)), strict=True
    ):
        lin(f"mlp.layers.{idx}", o, i)
    return sd


def write_image_reward(d: Path, seed: int = 4) -> Path:
    """ImageReward as distributed (``ImageReward.pt`` + ``med_config.json``) plus a BERT vocab.txt."""
    vocab_size = write_bert_vocab(d) + 2  # + [DEC], [ENC] as BLIP's init_tokenizer adds
    med = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": IR_TEXT["hidden"],
        "initializer_range": 0.02,
        "intermediate_size": IR_TEXT["intermediate"],
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": IR_TEXT["max_pos"],
        "model_type": "bert",
        "num_attention_heads": IR_TEXT["heads"],
        "num_hidden_layers": IR_TEXT["layers"],
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }
    (d / "med_config.json").write_text(json.dumps(med))
    torch.save(image_reward_state_dict(vocab_size, seed=seed), d / "ImageReward.pt")
    return d


# ---------------------------------------------------------------------------------------------------
# galleries


def exact_render(prompt: str, seed: int, res: int = 32) -> np.ndarray:
    """The world renderer's image of `prompt` (seeded layout): the evaluator passes it."""
    from compalign.world import parse_prompt, render, sample_layout, to_uint8

    return to_uint8(render(sample_layout(parse_prompt(prompt), np.random.default_rng(seed)), res))


def world_prompts(n_train: int = 3, n_heldout: int = 1) -> list[str]:
    return load_suite("spatial", "train")[:n_train] + load_suite("spatial", "heldout")[:n_heldout]


MODELS = ("bad", "good", "bad2")


def build_gallery(
    root: Path, prompts: list[str] | None = None, aspect: str = "spatial_relationship"
) -> Gallery:
    """A hand-made gallery of world prompts: ``good`` is an exact render of the prompt (passes),
    ``bad`` and ``bad2`` the same black image (no object: score 0, and equal, so a tie)."""
    prompts = prompts or world_prompts()
    root.mkdir(parents=True, exist_ok=True)
    black = np.zeros((32, 32, 3), np.uint8)
    records = []
    for i, p in enumerate(prompts):
        images = {}
        for m in MODELS:
            atomic_save_image(root / image_path(m, i), exact_render(p, i) if m == "good" else black)
            images[m] = image_path(m, i)
        records.append(Record(i, p, images))
    meta = new_meta(
        aspect,
        [{"name": m, "spec": None} for m in MODELS],
        seed=0,
        seeds={str(i): i for i in range(len(prompts))},
        settings={"resolution": None, "steps": None, "guidance": None},
        complete=True,
    )
    g = Gallery(root, records, meta, {"version": 1, "records": {}})
    g.save()
    return g


ITERCOMP_MODELS = ["sd15", "sdxl", "sd3"]


# world-grammar prompts: an expansion renders them with world models
ITERCOMP_PROMPTS = [
    "a red circle and a blue square",
    "a green triangle and a yellow cross",
    "a blue circle and a red square",
    "a cyan cross and a green circle",
]


def itercomp_tree(root: Path, n: int = 3, expanded: bool = False) -> Path:
    """An IterComp-style gallery file with its image tree under `root`."""
    models = ITERCOMP_MODELS + (["sdxl_iteration1"] if expanded else [])
    records = []
    for i in range(n):
        rec = {"index": i * 7, "prompt": ITERCOMP_PROMPTS[i % len(ITERCOMP_PROMPTS)]}
        for m in models:
            rel = f"datasets/train/attribute_binding/{m}_prompt_{i * 7}.png"
            atomic_save_image(root / rel, np.full((8, 8, 3), 40 * i, "uint8"))
            rec[f"image_{m}"] = rel
        if expanded:
            rec["initial_rank"] = [2, 3, 1]
            rec["rank"] = [2, 4, 3, 1]
        else:
            rec["rank"] = [3, 1, 2]
        records.append(rec)
    f = root / "itercomp.json"
    f.write_text(json.dumps(records, indent=4))
    return f


def read(path: Path):
    """A JSON file's content."""
    return json.loads(Path(path).read_text())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (to check that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_script(name: str, folder: str = "scripts"):
    """The module ``<folder>/<name>.py`` of the repository (scripts and benchmarks are not packages)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
