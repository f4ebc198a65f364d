"""The diffusers adapters on tiny randomly initialised pipelines of the real classes.

Each tiny pipeline of `tests.factories` (UNet / PixArt / SD3 / Flux transformer, AutoencoderKL,
CLIP and T5 text encoders with tokenizers written in code) is saved once per session and loaded
through the public path, ``create_generator("<prefix>:<folder>")``. The one-step generators are
checked against the diffusers pipeline's own one-step call, for gradients from image to noise,
gradient checkpointing, low-precision dtypes and two noise-optimisation steps; the multi-step ones
for shape, range and seed determinism.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402

from compalign.generators import create_generator, list_generators  # noqa: E402
from compalign.generators.base import noise_for_seeds  # noqa: E402
from compalign.generators.diffusers import GENERATORS, parse_dtype  # noqa: E402
from compalign.generators.diffusers.flux import pack, unpack  # noqa: E402
from compalign.generators.diffusers.stable_diffusion import HYPER_FILE  # noqa: E402
from tests.factories import BUILDERS, SIZE, sdxl_unet  # noqa: E402

PROMPTS = ["a red circle", "a blue square left of a green triangle"]
ONE_STEP = ["sd-turbo", "sdxl-turbo", "pixart-dmd", "hyper-sdxl", "flux-schnell"]
MULTI_STEP = ["sd", "sdxl", "sd3", "flux"]


# which saved tiny pipeline each prefix loads
FOLDER = {
    "sd-turbo": "sd",
    "sdxl-turbo": "sdxl",
    "pixart-dmd": "pixart",
    "hyper-sdxl": "hyper",
    "flux-schnell": "flux-schnell",
    "sd": "sd",
    "sdxl": "sdxl",
    "sd3": "sd3",
    "flux": "flux-dev",
}


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Every tiny pipeline saved once: {kind: folder}. ``hyper`` is the SDXL folder plus a
    ``Hyper-SDXL-1step-Unet.safetensors`` holding other UNet weights."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_diffusers")
    out = {}
    for i, (kind, build) in enumerate(BUILDERS.items()):
        torch.manual_seed(i)
        path = root / kind
        build().save_pretrained(path)
        out[kind] = path
    hyper = root / "hyper"
    shutil.copytree(out["sdxl"], hyper)
    torch.manual_seed(100)
    save_file({k: v.contiguous() for k, v in sdxl_unet().state_dict().items()}, str(hyper / HYPER_FILE))
    out["hyper"] = hyper
    return out


def size_kwargs(prefix: str) -> dict:
    return {"height": SIZE, "width": SIZE} if prefix.startswith("flux") else {}


@pytest.fixture(scope="session")
def onestep(tiny_folders):
    """{prefix: fp32 one-step generator on the CPU}, loaded on first use."""
    cache = {}

    def get(prefix: str):
        if prefix not in cache:
            path = tiny_folders[FOLDER[prefix]]
            cache[prefix] = create_generator(f"{prefix}:{path}", device="cpu", **size_kwargs(prefix))
        return cache[prefix]

    return get


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def pipeline_one_step(
    prefix: str, gen, noise: torch.Tensor, prompts: list[str], steps: int = 1
) -> torch.Tensor:
    """The same images through the diffusers pipeline's own call (the reference)."""
    pipe = gen.pipe
    common = dict(prompt=prompts, num_inference_steps=steps, height=SIZE, width=SIZE, output_type="pt")
    with torch.no_grad():
        if prefix in ("sd-turbo", "sdxl-turbo"):
            out = pipe(latents=noise, guidance_scale=0.0, **common)
        elif prefix == "hyper-sdxl":
            common.pop("num_inference_steps")
            out = pipe(latents=noise, guidance_scale=0.0, timesteps=[800], **common)
        elif prefix == "pixart-dmd":
            common.pop("num_inference_steps")
            out = pipe(
                latents=noise,
                guidance_scale=1.0,
                timesteps=[400],
                use_resolution_binning=False,
                clean_caption=False,
                max_sequence_length=gen.max_sequence_length,
                **common,
            )
        elif prefix == "flux-schnell":
            out = pipe(
                latents=pack(noise), guidance_scale=0.0, max_sequence_length=gen.max_sequence_length, **common
            )
        else:
            raise KeyError(prefix)
    return out.images.float()


# ---------------------------------------------------------------------------------------------------
# registry and options


def test_every_family_is_registered():
    names = list_generators()
    for prefix in ONE_STEP + MULTI_STEP:
        assert f"{prefix}:" in names
        assert GENERATORS[prefix].family == prefix and GENERATORS[prefix].default_model
    assert all(GENERATORS[p].differentiable for p in ONE_STEP)
    assert not any(GENERATORS[p].differentiable for p in MULTI_STEP)


def test_parse_dtype_and_bad_options(tiny_folders):
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("bfloat16") is torch.bfloat16
    assert parse_dtype(torch.float32) is torch.float32 and parse_dtype(None) is None
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int8")
    path = tiny_folders["sd"]
    with pytest.raises(ValueError, match="offload"):
        create_generator(f"sd-turbo:{path}", device="cpu", offload="disk")
    with pytest.raises(ValueError, match="steps"):
        create_generator(f"sd-turbo:{path}", device="cpu", num_inference_steps=4)
    with pytest.raises(ValueError, match="multiples"):
        create_generator(f"sd-turbo:{path}", device="cpu", height=33)


class _Stop(Exception):
    pass


def test_empty_source_means_the_default_hub_id(monkeypatch):
    """``"<prefix>:"`` loads the family's default model (loading itself is stopped: no network)."""
    from compalign.generators.diffusers import generator, pixart

    seen = []

    def record(*args, **kwargs):
        seen.append(str(args[1]))
        raise _Stop

    monkeypatch.setattr(generator, "load_pipeline", record)
    monkeypatch.setattr(pixart, "load_model", record)
    for prefix in ["sd-turbo", "sdxl-turbo", "flux-schnell", "pixart-dmd", *MULTI_STEP]:
        with pytest.raises(_Stop):
            create_generator(f"{prefix}:")
    assert seen == [
        "stabilityai/sd-turbo",
        "stabilityai/sdxl-turbo",
        "black-forest-labs/FLUX.1-schnell",
        "PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512",  # the DMD transformer swapped into PixArt-XL
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "stabilityai/stable-diffusion-xl-base-1.0",
        "stabilityai/stable-diffusion-3-medium-diffusers",
        "black-forest-labs/FLUX.1-dev",
    ]


def test_offload_options_construct_on_cpu(tiny_folders):
    # on the CPU an offload is a no-op placement; the GPU behaviour is checked by the benchmark
    for mode in ("model", "sequential"):
        gen = create_generator(f"sd-turbo:{tiny_folders['sd']}", device="cpu", offload=mode)
        assert gen.settings()["offload"] == mode
        assert gen.generate(PROMPTS[:1], seeds=0).shape == (1, 3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------------
# one step


@pytest.mark.parametrize("prefix", ONE_STEP)
def test_one_step_shape_range_and_seeds(prefix, onestep):
    gen = onestep(prefix)
    assert gen.differentiable and gen.resolution == SIZE
    shape = gen.noise_shape(2)
    assert shape[0] == 2 and shape[-1] == SIZE // 2
    a = gen.generate(PROMPTS, seeds=[3, 4])
    assert a.shape == (2, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, gen.generate(PROMPTS, seeds=[3, 4]))
    alone = gen.generate(PROMPTS[1:], seeds=[4])
    assert torch.allclose(alone[0], a[1], atol=1e-5)
    assert not torch.allclose(gen.generate(PROMPTS, seeds=[5, 6]), a)
    # generate == generate_from_noise on the seeds' noise
    z = noise_for_seeds([3, 4], shape[1:])
    with torch.no_grad():
        assert torch.allclose(gen.generate_from_noise(z, PROMPTS), a, atol=1e-6)


@pytest.mark.parametrize("prefix", ONE_STEP)
def test_one_step_matches_the_diffusers_pipeline(prefix, onestep):
    gen = onestep(prefix)
    z = noise_for_seeds([7, 8], gen.noise_shape(1)[1:])
    ours = gen.generate(PROMPTS, noise=z)
    ref = pipeline_one_step(prefix, gen, z, PROMPTS)
    assert ref.shape == ours.shape
    assert (ours - ref).abs().max() < 1e-5, f"{prefix}: {(ours - ref).abs().max():.2e}"


def test_flux_schnell_few_steps_match_the_pipeline(onestep):
    gen = onestep("flux-schnell")
    z = noise_for_seeds([9], gen.noise_shape(1)[1:])
    ours = gen.generate(PROMPTS[:1], noise=z, num_inference_steps=2)
    ref = pipeline_one_step("flux-schnell", gen, z, PROMPTS[:1], steps=2)
    assert (ours - ref).abs().max() < 1e-5
    assert torch.equal(unpack(pack(z), *z.shape[-2:]), z)


@pytest.mark.parametrize("prefix", ONE_STEP)
def test_gradient_reaches_the_noise(prefix, onestep):
    gen = onestep(prefix)
    z = gen.sample_noise(2, seed=0).float().requires_grad_(True)
    images = gen.generate_from_noise(z, PROMPTS)
    assert images.requires_grad and images.shape == (2, 3, SIZE, SIZE)
    images.mean().backward()
    g = z.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert g[0].abs().sum() > 0 and g[1].abs().sum() > 0  # each image reaches its own noise
    assert all(p.grad is None for p in gen.denoiser.parameters())  # weights frozen
    assert all(p.grad is None for p in gen.pipe.vae.parameters())


@pytest.mark.parametrize("prefix", ["sd-turbo", "pixart-dmd", "flux-schnell"])
def test_gradient_checkpointing_toggles(prefix, onestep):
    gen = onestep(prefix)
    grads = []
    try:
        for on in (True, False):
            gen.set_gradient_checkpointing(on)
            assert gen.denoiser.is_gradient_checkpointing is on
            assert (
                gen.pipe.vae.is_gradient_checkpointing is on
                and gen.settings()["gradient_checkpointing"] == ("on" if on else "off")
                and gen.settings()["checkpointed"] == (["denoiser", "vae"] if on else [])
            )
            z = gen.sample_noise(1, seed=1).float().requires_grad_(True)
            gen.generate_from_noise(z, PROMPTS[:1]).square().mean().backward()
            grads.append(z.grad)
    finally:
        gen.set_gradient_checkpointing("auto")
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


class _Brightness(torch.nn.Module):
    """A differentiable test reward: the image's mean brightness (higher is better)."""

    loss_offset = 1.0

    def forward(self, images, prompts):
        return images.mean(dim=(1, 2, 3)).float()


@pytest.mark.parametrize("prefix", ONE_STEP)
def test_two_reno_iterations(prefix, onestep):
    from compalign.noise_optimization.reno import ReNOConfig, WeightedReward, optimize_noise

    gen = onestep(prefix)
    cfg = ReNOConfig(iterations=3, lr=5.0, grad_clip=0.5, progress=False)  # 2 optimizer steps
    res = optimize_noise(gen, PROMPTS[:2], [WeightedReward("brightness", _Brightness())], [2, 3], cfg)
    scores = [h["rewards"]["brightness"] for h in res.history]
    assert len(scores) == 3 and all(math.isfinite(v) for row in scores for v in row)
    for b in range(2):
        assert scores[0][b] != scores[1][b] != scores[2][b]
        assert res.best_loss[b] < res.initial_loss[b], scores  # the noise moved towards brighter images
    assert res.best_images.shape[:2] == (2, 3)


def test_prompt_embeddings_are_cached(onestep):
    gen = onestep("sd-turbo")
    gen.clear_prompt_cache()
    calls = []
    original = gen._encode_batch
    gen._encode_batch = lambda prompts: calls.append(list(prompts)) or original(prompts)
    try:
        gen.generate([PROMPTS[0], PROMPTS[0], PROMPTS[1]], seeds=0)
        gen.generate(PROMPTS, seeds=1)
    finally:
        del gen._encode_batch
    assert calls == [[PROMPTS[0], PROMPTS[1]]]


@pytest.mark.parametrize("prefix", ["sd-turbo", "pixart-dmd"])
def test_classifier_free_guidance_option(prefix, onestep):
    gen = onestep(prefix)
    z = gen.sample_noise(1, seed=3).float().requires_grad_(True)
    plain = gen.generate_from_noise(z, PROMPTS[:1])
    guided = gen.generate_from_noise(z, PROMPTS[:1], guidance_scale=3.0)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)
    guided.mean().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("prefix", ["sd-turbo", "sdxl-turbo", "pixart-dmd", "flux-schnell"])
def test_bfloat16_and_float16(prefix, tiny_folders):
    """bf16 runs forward and backward on the CPU; fp16 constructs (and is run where the CPU supports
    it; the real check of fp16 is on a GPU, see benchmarks/bench_real_onestep.py)."""
    path = tiny_folders[FOLDER[prefix]]
    gen = create_generator(f"{prefix}:{path}", device="cpu", dtype="bf16", **size_kwargs(prefix))
    assert gen.dtype == torch.bfloat16 and gen.denoiser.dtype == torch.bfloat16
    assert gen.vae_dtype == torch.bfloat16  # bf16 has float32's range: no upcast
    z = gen.sample_noise(1, seed=0).float().requires_grad_(True)
    images = gen.generate_from_noise(z, PROMPTS[:1])
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    images.mean().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0

    half = create_generator(f"{prefix}:{path}", device="cpu", dtype=torch.float16, **size_kwargs(prefix))
    assert half.denoiser.dtype == torch.float16
    # SDXL's VAE (force_upcast) stays in float32 under fp16
    assert half.vae_dtype == (torch.float32 if half.pipe.vae.config.force_upcast else torch.float16)
    try:
        out = half.generate(PROMPTS[:1], seeds=0)
    except RuntimeError as e:  # an op without a CPU float16 kernel
        pytest.skip(f"float16 forward unsupported by this torch CPU build: {e}")
    assert out.shape == (1, 3, SIZE, SIZE)


def test_sdxl_turbo_replacement_vae(tiny_folders):
    # a replacement VAE from a folder holding a whole pipeline (its vae/ subfolder)
    gen = create_generator(
        f"sdxl-turbo:{tiny_folders['sdxl']}", device="cpu", dtype="fp16", vae=str(tiny_folders["sd"])
    )
    ref = AutoencoderKL.from_pretrained(tiny_folders["sd"], subfolder="vae")
    got = gen.pipe.vae.state_dict()
    assert all(torch.equal(v.half().float(), got[k].float()) for k, v in ref.state_dict().items())
    assert gen.vae_dtype == torch.float32  # force_upcast under fp16


def test_hyper_sdxl_loads_its_unet_weights(tiny_folders, onestep):
    from safetensors.torch import load_file

    gen = onestep("hyper-sdxl")
    assert type(gen.pipe.scheduler).__name__ == "LCMScheduler" and gen.timestep == 800
    assert gen.vae_dtype == torch.float32
    want = load_file(str(tiny_folders["hyper"] / HYPER_FILE))
    got = gen.pipe.unet.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # unet_weights=None keeps the folder's own UNet (the plain SDXL one)
    own = create_generator(f"hyper-sdxl:{tiny_folders['hyper']}", device="cpu", unet_weights=None)
    assert not torch.equal(own.pipe.unet.conv_in.weight, gen.pipe.unet.conv_in.weight)
    # an explicit file
    explicit = create_generator(
        f"hyper-sdxl:{tiny_folders['sdxl']}",
        device="cpu",
        unet_weights=str(tiny_folders["hyper"] / HYPER_FILE),
    )
    assert torch.equal(explicit.pipe.unet.conv_in.weight, gen.pipe.unet.conv_in.weight)


def test_pixart_transformer_swap(tiny_folders, onestep):
    gen = onestep("pixart-dmd")
    assert type(gen.pipe.scheduler).__name__ == "DDPMScheduler" and gen.timestep == 400
    swapped = create_generator(
        f"pixart-dmd:{tiny_folders['pixart']}", device="cpu", transformer=str(tiny_folders["pixart"])
    )
    z = gen.sample_noise(1, seed=5)
    assert torch.allclose(swapped.generate(PROMPTS[:1], noise=z), gen.generate(PROMPTS[:1], noise=z))


def test_settings_are_recorded(onestep):
    s = onestep("sdxl-turbo").settings()
    assert s["num_inference_steps"] == 1 and s["timestep"] == 999 and s["guidance_scale"] == 0.0
    assert s["scheduler"] == "EulerAncestralDiscreteScheduler" and s["height"] == SIZE


def test_noise_and_prompt_mismatch_errors(onestep):
    gen = onestep("sd-turbo")
    z = gen.sample_noise(2, seed=0)
    with pytest.raises(ValueError, match="prompts"):
        gen.generate_from_noise(z, PROMPTS[:1])
    with pytest.raises(ValueError, match="noise must be"):
        gen.generate_from_noise(z[:, :3], PROMPTS)
    with pytest.raises(ValueError, match="steps"):
        gen.generate(PROMPTS, seeds=0, num_inference_steps=2)


# ---------------------------------------------------------------------------------------------------
# multi-step


@pytest.mark.parametrize("prefix", MULTI_STEP)
def test_multi_step_generators(prefix, tiny_folders):
    gen = create_generator(f"{prefix}:{tiny_folders[FOLDER[prefix]]}", device="cpu", **size_kwargs(prefix))
    assert not gen.differentiable
    settings = dict(num_inference_steps=2, guidance_scale=2.0, height=SIZE, width=SIZE)
    a = gen.generate(PROMPTS, seeds=[1, 2], **settings)
    assert a.shape == (2, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, gen.generate(PROMPTS, seeds=[1, 2], **settings))
    alone = gen.generate(PROMPTS[1:], seeds=[2], **settings)
    assert torch.allclose(alone[0], a[1], atol=1e-5)
    assert not torch.allclose(gen.generate(PROMPTS, seeds=[3, 4], **settings), a)
    with pytest.raises(NotImplementedError):
        gen.generate_from_noise(gen.sample_noise(1, seed=0), PROMPTS[:1])
