"""The models feedback learning trains: one interface over world pipelines and SD-like pipelines,
LoRA adapters (peft) and the closed-form clean-sample prediction of a sampler step.

A `Backbone` wraps a loaded pipeline and says how to tokenize and encode prompts, call the UNet,
start the sampler from unit noise, decode a clean sample to images in ``[0, 1]`` and save the
pipeline. `Denoiser` is the `torch.nn.Module` that training wraps (accelerate / DDP): one forward
call computes everything that carries gradient in a micro-step (the ReFL model call and, for the
denoising regulariser, the diffusion loss), so distributed gradient sync sees one forward per
backward.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

from ..generators import create_generator
from ..generators.diffusers.schedulers import vp_clean_latent
from ..generators.world.generator import WorldGenerator, quiet_loading
from ..generators.world.tokenizer import tokenize
from ..generators.world.train import diffusion_loss

TEXT_LORA_TARGETS = {
    "clip": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "t5": ("q", "k", "v", "o"),
}


# ------------------------------------------------------------------------------------- backbones
class WorldBackbone:
    """A `WorldPipeline` (pixel space, folded): decode = unfold + map ``[-1, 1]`` to ``[0, 1]``."""

    kind = "world"

    def __init__(self, pipe, source: str, captions: str | None = None):
        self.pipe, self.source = pipe, source
        self.captions = captions  # the caption preset the base learnt from (None: not recorded)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def default_steps(self) -> int:
        return int(self.pipe.config.default_steps)

    @property
    def default_guidance(self) -> float:
        return float(self.pipe.config.default_guidance_scale)

    def noise_shape(self) -> tuple[int, ...]:
        return tuple(self.pipe.noise_shape(1)[1:])

    def tokens(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(self.pipe.tokenizer, prompts, device=device)

    def encode(self, text_encoder, ids, mask) -> torch.Tensor:
        return text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    def unet_out(self, unet, x, t, hidden, mask) -> torch.Tensor:
        return self.pipe.predict(x, t, hidden.to(x.dtype), mask, unet=unet)

    def initial(self, noise: torch.Tensor, scheduler) -> torch.Tensor:
        return self.pipe.fold(noise) * scheduler.init_noise_sigma

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.pipe.unfold(x0.float()).clamp(-1, 1) * 0.5 + 0.5

    def text_lora_targets(self) -> tuple[str, ...]:
        name = type(self.text_encoder).__name__
        if name == "DualTextEncoder":
            return TEXT_LORA_TARGETS["clip"] + TEXT_LORA_TARGETS["t5"]
        return TEXT_LORA_TARGETS["t5" if "T5" in name else "clip"]

    def save(self, folder: Path) -> None:
        with quiet_loading():
            self.pipe.save_pretrained(folder)


class SDBackbone(WorldBackbone):
    """A Stable-Diffusion-like diffusers pipeline (one CLIP text encoder, UNet, VAE)."""

    kind = "diffusers"

    def __init__(self, pipe, source: str, default_guidance: float):
        super().__init__(pipe, source)
        self._guidance = float(default_guidance)

    @property
    def default_steps(self) -> int:
        return 40

    @property
    def default_guidance(self) -> float:
        return self._guidance

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def noise_shape(self) -> tuple[int, ...]:
        side = int(self.unet.config.sample_size)
        return (int(self.unet.config.in_channels), side, side)

    def tokens(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.pipe.tokenizer
        enc = tok(
            list(prompts),
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def encode(self, text_encoder, ids, mask) -> torch.Tensor:
        use_mask = getattr(text_encoder.config, "use_attention_mask", False)
        return text_encoder(ids, attention_mask=mask if use_mask else None)[0]

    def unet_out(self, unet, x, t, hidden, mask) -> torch.Tensor:
        return unet(x, t, encoder_hidden_states=hidden.to(x.dtype), return_dict=False)[0]

    def initial(self, noise: torch.Tensor, scheduler) -> torch.Tensor:
        return noise * scheduler.init_noise_sigma

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = x0.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None:
            z = z + vae.config.shift_factor
        image = vae.decode(z, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def text_lora_targets(self) -> tuple[str, ...]:
        return TEXT_LORA_TARGETS["clip"]


def load_backbone(base: str) -> WorldBackbone:
    """Load `base` in float32 on the CPU (world model name / folder, or ``sd:``-style spec)."""

    try:
        gen = create_generator(base, device="cpu", dtype=torch.float32)
    except (KeyError, FileNotFoundError, LookupError) as e:
        raise ValueError(f"cannot load base model {base!r}: {e}") from e
    if isinstance(gen, WorldGenerator):
        return WorldBackbone(gen.pipe, base, gen.training_captions)
    pipe = gen.pipe
    names = set(getattr(pipe, "components", {}))
    one_text_encoder = getattr(pipe, "text_encoder_2", None) is None
    if {"unet", "vae", "text_encoder", "tokenizer"} <= names and one_text_encoder:
        if getattr(pipe.unet.config, "addition_embed_type", None) is None:
            return SDBackbone(pipe, base, getattr(gen, "guidance_scale", 7.5))
    raise ValueError(
        f"feedback training supports world models and Stable-Diffusion-like pipelines (sd:, sd-turbo:); "
        f"{base!r} is a {type(pipe).__name__}"
    )


def sampler_scheduler(backbone: WorldBackbone, sampler: str | None):
    """A private scheduler for the ReFL sampler: a copy of the base's, or `sampler` built from its
    config (the pipeline's own scheduler is left untouched)."""
    sched = backbone.scheduler
    if sampler is None:
        return copy.deepcopy(sched)
    # lazy: loads diffusers
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    cfg = dict(sched.config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=True)
    if sampler == "dpmsolver":
        return DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2)
    return EulerDiscreteScheduler.from_config(cfg)


def clean_prediction(scheduler, out: torch.Tensor, sample: torch.Tensor, t, index: int) -> torch.Tensor:
    """The model's prediction of the clean sample at step `index` (timestep `t`) of `scheduler`,
    from its output `out` for the current `sample` (the sampler's state, before
    `scale_model_input`); differentiable, float32.

    Sigma-form schedulers (Euler family): ``x0 = x - sigma * eps`` (epsilon) or
    ``x0 = -sigma / sqrt(sigma^2 + 1) * v + x / (sigma^2 + 1)`` (v), what their `step` returns as
    `pred_original_sample`. Variance-preserving ones (DDIM, DDPM, DPM-Solver, PNDM, ...): the VP
    formula at ``alphas_cumprod[t]`` (with the scheduler's clipping / thresholding)."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler  # lazy: loads diffusers

    kind = scheduler.config.prediction_type
    if isinstance(scheduler, (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)):
        sigma = scheduler.sigmas[index].to(sample.device, torch.float32)
        x, o = sample.float(), out.float()
        if kind == "epsilon":
            return x - sigma * o
        if kind == "v_prediction":
            return o * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        if kind == "sample":
            return o
        raise ValueError(f"unsupported prediction_type {kind!r}")
    return vp_clean_latent(scheduler, out, sample, t)


# ------------------------------------------------------------------------------------- LoRA
LORA_EXTRA_HINT = 'LoRA (--lora-rank) needs peft, the lora extra: pip install -e ".[lora]"'


def require_peft() -> None:
    """A one-line ValueError naming the `lora` extra when peft cannot be imported."""
    try:
        import peft  # noqa: F401  # lazy: peft is optional (the lora extra)
    except ImportError:
        raise ValueError(LORA_EXTRA_HINT) from None


def add_lora(module: torch.nn.Module, rank: int, alpha: float, targets) -> int:
    """Inject LoRA adapters (peft) into `module` in place; only they require grad afterwards.
    Returns the number of adapted layers."""
    require_peft()
    # lazy: peft is optional (the lora extra)
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = [n for n, _ in module.named_modules()]
    present = [t for t in targets if any(n == t or n.endswith("." + t) for n in names)]
    if not present:
        raise ValueError(f"none of the LoRA targets {list(targets)} is a layer of {type(module).__name__}")
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=present, init_lora_weights=True)
    inject_adapter_in_model(cfg, module, adapter_name="feedback")
    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def _lora_layers(module: torch.nn.Module) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer  # lazy: peft is optional (the lora extra)

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def adapters_disabled(*modules: torch.nn.Module):
    """The base model: LoRA adapters switched off (their requires_grad left as it is)."""
    layers = [layer for m in modules if m is not None for layer in _lora_layers(m)]
    # peft's `enable_adapters(False)` also flips requires_grad; the flag alone is what forward reads
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer in layers:
            layer._disable_adapters = False


def merge_lora(module: torch.nn.Module) -> int:
    """Merge every LoRA adapter into its base layer and put the plain layer back (in place).
    Returns the number of merged layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # lazy: peft is optional (the lora extra)

    found = [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in found:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return len(found)


# ------------------------------------------------------------------------------------- module
class Denoiser(torch.nn.Module):
    """UNet + text encoder of a backbone, as one module: ``forward(refl, denoise=None)``.

    ``refl``: ``{"x", "t", "ids", "mask"}`` -> the UNet output (text encoded inside, with
    gradient only when the text encoder trains). ``denoise`` (world models): ``{"batch", "step",
    "seed", "cond_dropout", "train_sched"}`` -> also the diffusion loss of that training batch
    (`compalign.generators.world.train.diffusion_loss`). Returns ``(output, loss or None)``.
    """

    def __init__(self, backbone: WorldBackbone, train_text_encoder: bool):
        super().__init__()
        self.unet = backbone.unet
        self.text_encoder = backbone.text_encoder
        self.train_text_encoder = bool(train_text_encoder)
        self._backbone = [backbone]  # not a submodule

    @property
    def backbone(self) -> WorldBackbone:
        return self._backbone[0]

    def encode(self, ids, mask) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_text_encoder):
            return self.backbone.encode(self.text_encoder, ids, mask)

    def forward(self, refl: dict, denoise: dict | None = None):
        bb = self.backbone
        hidden = self.encode(refl["ids"], refl["mask"])
        out = bb.unet_out(self.unet, refl["x"], refl["t"], hidden, refl["mask"])
        loss = None
        if denoise is not None:
            cfg = SimpleNamespace(seed=denoise["seed"], cond_dropout=denoise["cond_dropout"], snr_gamma=None)
            parts = {"unet": self.unet, "text_encoder": self.text_encoder}
            loss = diffusion_loss(
                cfg, parts, bb.pipe, denoise["train_sched"], denoise["batch"], denoise["step"], out.device
            )
        return out, loss


class FrozenBase(torch.nn.Module):
    """A frozen copy of the base UNet + text encoder (for the distance regulariser of a full
    fine-tune; LoRA runs use the trained model with its adapters disabled instead)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.unet = copy.deepcopy(denoiser.unet)
        self.text_encoder = copy.deepcopy(denoiser.text_encoder)
        self._backbone = [denoiser.backbone]
        self.eval()
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, refl: dict) -> torch.Tensor:
        bb = self._backbone[0]
        hidden = bb.encode(self.text_encoder, refl["ids"], refl["mask"])
        return bb.unet_out(self.unet, refl["x"], refl["t"], hidden, refl["mask"])
