"""Real reward adapters (``compalign.rewards.real``) on tiny random models of the real architectures.

Each tiny model is saved the way the real checkpoint is distributed (a transformers folder for
CLIP / PickScore / the aesthetic CLIP; an open_clip state dict ``{"state_dict": ...}`` for HPSv2; the
official ``ImageReward.pt`` key layout + ``med_config.json`` for ImageReward; a ``torch.save`` MLP
state dict for the aesthetic head) and loaded through the public constructors by local path.

Checked per reward: (1) the gradient reaches the image (finite, nonzero); (2) the differentiable
preprocessing matches the library's PIL preprocessing (transformers' ``CLIPImageProcessor`` /
``BlipImageProcessor``) within 0.05 max abs / 0.01 mean abs on normalised pixels (resize kernels
differ slightly; PIL also rounds to uint8 and clips bicubic overshoot); (3) scores match a reference
computed independently from the same weights (transformers' own ``get_image_features`` /
``get_text_features`` on processor outputs; for HPSv2 and ImageReward a forward written here in plain
torch from the checkpoint's own key layout): within 1e-4 at the model's native size (same pixels), and
on resized PIL inputs within 0.005 x logit scale (CLIP), 0.02 (HPS cosine, aesthetic) and 0.05
(ImageReward, standardised); (4) dtype (bf16 against fp32), gradient checkpointing (same gradients, the
layer really recomputed), the registry, loading errors and bad inputs. With open_clip importable (it
needs torchvision), the HPS weights are also run through open_clip's own model and preprocess.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from compalign.rewards.base import Reward
from compalign.rewards.real.aesthetic import LaionAestheticReward
from compalign.rewards.real.clip_score import CLIPScoreReward
from compalign.rewards.real.common import MLPHead, load_torch_state_dict, resolve_dtype
from compalign.rewards.real.hpsv2 import HPSv2Reward, open_clip_to_hf_state_dict
from compalign.rewards.real.image_reward import (
    IMAGE_REWARD_MEAN,
    IMAGE_REWARD_STD,
    ImageRewardReward,
    image_reward_to_hf_state_dicts,
)
from compalign.rewards.real.pickscore import PickScoreReward
from compalign.rewards.real.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    PreprocessConfig,
    clip_preprocess,
)
from compalign.rewards.registry import create_reward, list_rewards, register_reward, reward_class
from tests.factories import (
    IR_TEXT,
    IR_VISION,
    LONG_PROMPT,
    clip_processor,
    tiny_clip_model,
    write_clip_tokenizer,
)

transformers = pytest.importorskip("transformers")

PROMPTS = ["a red cube", "two blue balls left of the cat"]
SIZE = 32  # every tiny model's native image size
PIX_MAX, PIX_MEAN = 0.05, 0.01  # normalised-pixel tolerances of the preprocessing comparison


# ----------------------------------------------------------------------------- images


def smooth_image(h, w, seed):
    """A smooth random uint8 RGB image (low-frequency noise, like a generator's output)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 5, 5, generator=g)
    img = F.interpolate(0.05 + 0.9 * low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def to_tensor(pils):
    """PIL images (same size) -> [B, 3, H, W] float in [0, 1] (exactly the PIL pixels)."""
    return torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255 for p in pils])


def features(out):
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def assert_grad_reaches_image(reward, h=40, w=48):
    x = torch.rand(2, 3, h, w, requires_grad=True)
    score = reward(x, PROMPTS)
    assert score.dtype == torch.float32 and score.shape == (2,)
    score.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def assert_pixels_close(ours, ref):
    diff = (ours - ref).abs()
    assert diff.max() < PIX_MAX and diff.mean() < PIX_MEAN, (float(diff.max()), float(diff.mean()))


# ----------------------------------------------------------------------------- tiny CLIP folders


@pytest.fixture(scope="module")
def pickscore_dirs(tmp_path_factory):
    """PickScore's split: model weights in one folder, tokenizer + preprocessing in another."""
    model_dir, proc_dir = tmp_path_factory.mktemp("pickscore"), tmp_path_factory.mktemp("laion-proc")
    tok = write_clip_tokenizer(proc_dir)
    clip_processor().save_pretrained(proc_dir)
    tiny_clip_model(tok, seed=1).save_pretrained(model_dir)
    return model_dir, proc_dir


@pytest.fixture(scope="module")
def clip_reward(clip_dir):
    return CLIPScoreReward(clip_dir)


def reference_clip_scores(folder, pils, prompts, processor_folder=None):
    """transformers' own CLIP scoring on processor outputs: logit_scale.exp() * cos."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    proc = processor_folder or folder
    model = CLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(proc)
    pixels = CLIPImageProcessor.from_pretrained(proc)(images=pils, return_tensors="pt")["pixel_values"]
    t = tok(prompts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        img = F.normalize(features(model.get_image_features(pixel_values=pixels)), dim=-1)
        txt = F.normalize(features(model.get_text_features(**t)), dim=-1)
        return model.logit_scale.exp() * (img * txt).sum(-1), pixels


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("hw", [(48, 40), (20, 26), (SIZE, SIZE), (64, 64)])
def test_preprocess_matches_clip_image_processor(hw):
    pil = smooth_image(*hw, seed=hw[0])
    ref = clip_processor()(images=pil, return_tensors="pt")["pixel_values"]
    ours = clip_preprocess(to_tensor([pil]), PreprocessConfig.from_processor_dict(clip_processor().to_dict()))
    assert ours.shape == ref.shape == (1, 3, SIZE, SIZE)
    assert_pixels_close(ours, ref)


def test_preprocess_config_reads_processor_and_is_differentiable(clip_dir):
    cfg = PreprocessConfig.from_pretrained(clip_dir)
    assert cfg.size == SIZE and cfg.crop_size == (SIZE, SIZE) and cfg.interpolation == "bicubic"
    assert cfg.mean == pytest.approx(OPENAI_CLIP_MEAN) and cfg.std == pytest.approx(OPENAI_CLIP_STD)
    x = torch.rand(1, 3, 50, 70, requires_grad=True)
    clip_preprocess(x, cfg).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(interpolation="lanczos")
    with pytest.raises(ValueError, match="resampling"):
        PreprocessConfig.from_processor_dict({"resample": 1})


# ----------------------------------------------------------------------------- CLIP and PickScore


def test_clip_score_matches_transformers(clip_dir, clip_reward):
    assert (
        clip_reward.name == "clip" and clip_reward.loss_offset == 100.0 and clip_reward.default_weight == 0.01
    )
    # native size: identical pixels, only the architecture path differs
    native = [smooth_image(SIZE, SIZE, seed=s) for s in (1, 2)]
    ref, pixels = reference_clip_scores(clip_dir, native, PROMPTS)
    with torch.no_grad():
        ours = clip_reward(to_tensor(native), PROMPTS)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # another size: the processor's PIL resize vs ours
    big = [smooth_image(48, 40, seed=s) for s in (3, 4)]
    ref, _ = reference_clip_scores(clip_dir, big, PROMPTS)
    with torch.no_grad():
        ours = clip_reward(to_tensor(big), PROMPTS)
    torch.testing.assert_close(ours, ref, rtol=0.0, atol=0.005 * float(clip_reward.model.logit_scale.exp()))


def test_clip_score_gradient_loss_and_cache(clip_reward):
    assert_grad_reaches_image(clip_reward)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(clip_reward.loss(x, PROMPTS), 100.0 - clip_reward(x, PROMPTS))
    assert set(PROMPTS) <= set(clip_reward._text_cache)
    assert not any(p.requires_grad for p in clip_reward.parameters())
    clip_reward.train()
    assert not clip_reward.model.training  # frozen rewards stay in eval mode
    # a long prompt is truncated to the text window, not an error
    with torch.no_grad():
        assert torch.isfinite(clip_reward(x[:1], [LONG_PROMPT])).all()


def test_pickscore_split_model_and_processor(pickscore_dirs):
    model_dir, proc_dir = pickscore_dirs
    reward = PickScoreReward(model_dir, processor=proc_dir)
    assert reward.name == "pickscore" and reward.loss_offset == 30.0 and reward.default_weight == 0.05
    native = [smooth_image(SIZE, SIZE, seed=s) for s in (5, 6)]
    ref, _ = reference_clip_scores(model_dir, native, PROMPTS, processor_folder=proc_dir)
    with torch.no_grad():
        torch.testing.assert_close(reward(to_tensor(native), PROMPTS), ref, rtol=1e-4, atol=1e-4)
    assert_grad_reaches_image(reward)


def test_clip_dtype_and_gradient_checkpointing(clip_dir, clip_reward):
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        ref = clip_reward(x, PROMPTS)
    bf16 = CLIPScoreReward(clip_dir, dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.model.dtype == torch.bfloat16
    with torch.no_grad():
        out = bf16(x, PROMPTS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.0, atol=0.05 * float(clip_reward.model.logit_scale.exp()))

    ckpt = CLIPScoreReward(clip_dir, gradient_checkpointing=True)
    calls = []
    ckpt.model.vision_model.encoder.layers[0].layer_norm1.register_forward_hook(lambda *a: calls.append(1))
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    sa, sb = ckpt(xa, PROMPTS), clip_reward(xb, PROMPTS)
    torch.testing.assert_close(sa, sb)
    sa.sum().backward()
    sb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)
    assert len(calls) == 2  # forward + recompute in backward: the layer really was checkpointed


# ----------------------------------------------------------------------------- HPSv2 (open_clip layout)

HPS_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": None, "width": 32, "heads": 2, "layers": 2},
}


def open_clip_state_dict(cfg, seed):
    """Random weights in open_clip's CLIP key layout (VisionTransformer + text tower)."""
    g = torch.Generator().manual_seed(seed)
    v, t, emb = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    sd = {}

    def n(*shape, std):
        return torch.randn(*shape, generator=g) * std

    def ln(p, w):
        sd[p + ".weight"], sd[p + ".bias"] = 1 + n(w, std=0.1), n(w, std=0.02)

    def blocks(prefix, w, layers):
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            ln(p + "ln_1", w)
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = (
                n(3 * w, w, std=w**-0.5),
                n(3 * w, std=0.02),
            )
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = (
                n(w, w, std=w**-0.5),
                n(w, std=0.02),
            )
            ln(p + "ln_2", w)
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = n(4 * w, w, std=w**-0.5), n(4 * w, std=0.02)
            sd[p + "mlp.c_proj.weight"] = n(w, 4 * w, std=(4 * w) ** -0.5)
            sd[p + "mlp.c_proj.bias"] = n(w, std=0.02)

    vw, patch, grid = v["width"], v["patch_size"], v["image_size"] // v["patch_size"]
    sd["visual.class_embedding"] = n(vw, std=vw**-0.5)
    sd["visual.positional_embedding"] = n(grid * grid + 1, vw, std=vw**-0.5)
    sd["visual.conv1.weight"] = n(vw, 3, patch, patch, std=(3 * patch * patch) ** -0.5)
    ln("visual.ln_pre", vw)
    blocks("visual.", vw, v["layers"])
    ln("visual.ln_post", vw)
    sd["visual.proj"] = n(vw, emb, std=vw**-0.5)
    tw = t["width"]
    sd["token_embedding.weight"] = n(t["vocab_size"], tw, std=0.5)
    sd["positional_embedding"] = n(t["context_length"], tw, std=0.1)
    blocks("", tw, t["layers"])
    ln("ln_final", tw)
    sd["text_projection"] = n(tw, emb, std=tw**-0.5)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    return sd


def oc_transformer(x, sd, prefix, layers, heads, mask=None):
    """open_clip's ResidualAttentionBlock stack, with torch's MultiheadAttention like open_clip."""
    w = x.shape[-1]
    for i in range(layers):
        p = f"{prefix}transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(w, heads, batch_first=True)
        mha.load_state_dict(
            {
                "in_proj_weight": sd[p + "attn.in_proj_weight"],
                "in_proj_bias": sd[p + "attn.in_proj_bias"],
                "out_proj.weight": sd[p + "attn.out_proj.weight"],
                "out_proj.bias": sd[p + "attn.out_proj.bias"],
            }
        )
        mha.eval()
        h = F.layer_norm(x, (w,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (w,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.linear(
            F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
            sd[p + "mlp.c_proj.weight"],
        )
        x = x + h + sd[p + "mlp.c_proj.bias"]
    return x


def oc_encode_image(pixels, sd, cfg):
    v = cfg["vision_cfg"]
    w = v["width"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v["patch_size"]).flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, w), x], dim=1)
    x = x + sd["visual.positional_embedding"]
    x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = oc_transformer(x, sd, "visual.", v["layers"], w // v["head_width"])
    x = F.layer_norm(x, (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x[:, 0] @ sd["visual.proj"]


def oc_encode_text(ids, sd, cfg):
    t = cfg["text_cfg"]
    n = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:n]
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = oc_transformer(x, sd, "", t["layers"], t["heads"], mask=mask)
    x = F.layer_norm(x, (t["width"],), sd["ln_final.weight"], sd["ln_final.bias"])
    return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]


def oc_tokenize(tok, prompts, context_length):
    """open_clip's tokenisation: [SOT] bpe [EOT], truncated to the context (EOT kept), 0-padded."""
    out = torch.zeros(len(prompts), context_length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = tok(p)["input_ids"]
        if len(ids) > context_length:
            ids = ids[: context_length - 1] + [ids[-1]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    """HPSv2 as distributed: ``HPS_v2.1_compressed.pt`` = ``{"state_dict": open_clip weights}``,
    here with an open_clip hub-style ``open_clip_config.json`` and the tokenizer files beside it."""
    d = tmp_path_factory.mktemp("hps")
    tok = write_clip_tokenizer(d)
    cfg = json.loads(json.dumps(HPS_CFG))
    cfg["text_cfg"]["vocab_size"] = len(tok)
    sd = open_clip_state_dict(cfg, seed=3)
    torch.save({"state_dict": sd}, d / "HPS_v2.1_compressed.pt")
    pre = {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD), "interpolation": "bicubic"}
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return d


@pytest.fixture(scope="module")
def hps_reward(hps_dir):
    return HPSv2Reward(hps_dir)


def reference_hps(hps_dir, pixels, prompts):
    from transformers import AutoTokenizer

    cfg = json.loads((hps_dir / "open_clip_config.json").read_text())["model_cfg"]
    sd = torch.load(hps_dir / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    ids = oc_tokenize(AutoTokenizer.from_pretrained(hps_dir), prompts, cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        img = F.normalize(oc_encode_image(pixels, sd, cfg), dim=-1)
        txt = F.normalize(oc_encode_text(ids, sd, cfg), dim=-1)
    return (img * txt).sum(-1)


def test_hps_matches_open_clip_forward(hps_dir, hps_reward):
    assert hps_reward.name == "hpsv2" and hps_reward.loss_offset == 1.0 and hps_reward.default_weight == 5.0
    native = [smooth_image(SIZE, SIZE, seed=s) for s in (7, 8)]
    x = to_tensor(native)
    pixels = clip_processor()(images=native, return_tensors="pt")["pixel_values"]  # open_clip's val transform
    ref = reference_hps(hps_dir, pixels, PROMPTS)
    with torch.no_grad():
        ours = hps_reward(x, PROMPTS)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    big = [smooth_image(44, 56, seed=s) for s in (9, 10)]
    pixels = clip_processor()(images=big, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            hps_reward(to_tensor(big), PROMPTS), reference_hps(hps_dir, pixels, PROMPTS), rtol=0.0, atol=0.02
        )
        # truncation keeps the EOT token like open_clip's tokenizer
        long_ref = reference_hps(hps_dir, pixels[:1], [LONG_PROMPT])
        torch.testing.assert_close(
            hps_reward(to_tensor(big[:1]), [LONG_PROMPT]), long_ref, rtol=0.0, atol=0.02
        )


def test_hps_gradient_dtype_and_file_path(hps_dir, hps_reward):
    assert_grad_reaches_image(hps_reward)
    # the checkpoint file itself (config and tokenizer then given explicitly)
    r = HPSv2Reward(
        hps_dir / "HPS_v2.1_compressed.pt",
        model_config=hps_dir / "open_clip_config.json",
        tokenizer=hps_dir,
        dtype=torch.bfloat16,
    )
    assert r.dtype == torch.bfloat16
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(r(x, PROMPTS), hps_reward(x, PROMPTS), rtol=0.0, atol=0.03)


def test_hps_conversion_refuses_unknown_layouts(hps_dir, tmp_path):
    sd = load_torch_state_dict(hps_dir / "HPS_v2.1_compressed.pt")
    with pytest.raises(ValueError, match="visual.transformer.resblocks.0.ls_1.gamma"):
        open_clip_to_hf_state_dict({**sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)})
    # a checkpoint of another size than the config
    cfg = json.loads((hps_dir / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["layers"] = 3
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        HPSv2Reward(hps_dir / "HPS_v2.1_compressed.pt", model_config=tmp_path, tokenizer=hps_dir)
    cfg["model_cfg"]["vision_cfg"]["layers"] = 2
    cfg["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    with pytest.raises(NotImplementedError, match="attentional_pool"):
        HPSv2Reward(hps_dir, model_config=cfg)


def test_hps_against_real_open_clip(hps_dir, hps_reward):
    """Where open_clip is importable: its own model, tokenizer and preprocess on the same weights."""
    open_clip = pytest.importorskip("open_clip")
    pytest.importorskip("torchvision")
    cfg = json.loads((hps_dir / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.model.CLIP(**cfg).eval()
    sd = torch.load(hps_dir / "HPS_v2.1_compressed.pt", weights_only=True)["state_dict"]
    model.load_state_dict(sd)  # strict: the test's key layout is open_clip's own
    preprocess = open_clip.image_transform(SIZE, is_train=False, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
    pils = [smooth_image(44, 56, seed=s) for s in (11, 12)]
    pixels = torch.stack([preprocess(p) for p in pils])
    ours_pixels = clip_preprocess(to_tensor(pils), hps_reward.preprocess_config)
    assert_pixels_close(ours_pixels, pixels)
    ids = oc_tokenize(hps_reward.tokenizer, PROMPTS, cfg["text_cfg"]["context_length"])
    with torch.no_grad():
        img = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(ids), dim=-1)
        torch.testing.assert_close(
            hps_reward(to_tensor(pils), PROMPTS), (img * txt).sum(-1), rtol=0.0, atol=0.02
        )
        native = torch.rand(2, 3, SIZE, SIZE)
        norm = clip_preprocess(native, hps_reward.preprocess_config)
        ref = (F.normalize(model.encode_image(norm), dim=-1) * txt).sum(-1)
        torch.testing.assert_close(hps_reward(native, PROMPTS), ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- ImageReward (official layout)


@pytest.fixture(scope="module")
def ir_reward(ir_dir):
    return ImageRewardReward(ir_dir)


def _attention(q, k, v, heads, mask=None):
    b, n, d = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)


def reference_image_reward(sd, pixels, input_ids, attention_mask):
    """ImageReward's score written from BLIP's own modules (vit.py, med.py) and ImageReward.py."""
    lin = lambda x, k: F.linear(x, sd[k + ".weight"], sd[k + ".bias"])  # noqa: E731
    ln = lambda x, k, eps: F.layer_norm(x, x.shape[-1:], sd[k + ".weight"], sd[k + ".bias"], eps)  # noqa: E731
    v = "blip.visual_encoder."
    w, heads = IR_VISION["width"], IR_VISION["heads"]
    x = F.conv2d(
        pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=IR_VISION["patch"]
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd[v + "pos_embed"]
    for i in range(IR_VISION["layers"]):
        b = f"{v}blocks.{i}."
        h = ln(x, b + "norm1", 1e-6)
        bsz, n, _ = h.shape
        qkv = lin(h, b + "attn.qkv").reshape(bsz, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
        att = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (w // heads) ** -0.5).softmax(-1)
        x = x + lin((att @ qkv[2]).transpose(1, 2).reshape(bsz, n, w), b + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image_embeds = ln(x, v + "norm", 1e-6)
    t = "blip.text_encoder."
    eps = 1e-12
    pos = sd[t + "embeddings.position_embeddings.weight"][: input_ids.shape[1]]
    y = ln(sd[t + "embeddings.word_embeddings.weight"][input_ids] + pos, t + "embeddings.LayerNorm", eps)
    mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0  # med.py's extended mask
    for i in range(IR_TEXT["layers"]):
        layer = f"{t}encoder.layer.{i}."
        a = layer + "attention."
        ctx = _attention(
            lin(y, a + "self.query"), lin(y, a + "self.key"), lin(y, a + "self.value"), IR_TEXT["heads"], mask
        )
        y = ln(lin(ctx, a + "output.dense") + y, a + "output.LayerNorm", eps)
        c = layer + "crossattention."
        ctx = _attention(
            lin(y, c + "self.query"),
            lin(image_embeds, c + "self.key"),
            lin(image_embeds, c + "self.value"),
            IR_TEXT["heads"],
        )
        y = ln(lin(ctx, c + "output.dense") + y, c + "output.LayerNorm", eps)
        y = ln(
            lin(F.gelu(lin(y, layer + "intermediate.dense")), layer + "output.dense") + y,
            layer + "output.LayerNorm",
            eps,
        )
    r = y[:, 0]
    for idx in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{idx}")
    return (r.squeeze(-1) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


def ir_tokenize(ir_dir, prompts):
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(ir_dir)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")


def test_image_reward_key_mapping_and_score(ir_dir, ir_reward):
    assert (
        ir_reward.name == "imagereward" and ir_reward.loss_offset == 2.0 and ir_reward.default_weight == 1.0
    )
    assert ir_reward.vision.config.num_attention_heads == IR_VISION["heads"]
    assert ir_reward.vision.config.image_size == SIZE
    sd = torch.load(ir_dir / "ImageReward.pt", weights_only=True)
    # every official key is used except the contrastive projections and the position_ids buffer
    vision, text, head = image_reward_to_hf_state_dicts(sd)
    unused = [
        k for k in sd if k.startswith(("blip.vision_proj", "blip.text_proj")) or k.endswith("position_ids")
    ]
    assert len(vision) + len(text) + len(head) + len(unused) == len(sd)
    native = [smooth_image(SIZE, SIZE, seed=s) for s in (13, 14)]
    tok = ir_tokenize(ir_dir, PROMPTS)
    with torch.no_grad():
        ours = ir_reward(to_tensor(native), PROMPTS)
        pixels = clip_preprocess(to_tensor(native), PreprocessConfig.square(SIZE))
        ref = reference_image_reward(sd, pixels, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ours.std() > 0  # the tiny model tells the two images apart


def test_image_reward_preprocessing_matches_blip_processor(ir_dir, ir_reward):
    from transformers import BlipImageProcessor

    proc = BlipImageProcessor(
        size={"height": SIZE, "width": SIZE},
        resample=3,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    pils = [
        smooth_image(56, 56, seed=s) for s in (15, 16)
    ]  # square: BLIP's resize == ImageReward's resize+crop
    pixels = proc(images=pils, return_tensors="pt")["pixel_values"]
    assert_pixels_close(clip_preprocess(to_tensor(pils), ir_reward.preprocess_config), pixels)
    sd = torch.load(ir_dir / "ImageReward.pt", weights_only=True)
    tok = ir_tokenize(ir_dir, PROMPTS)
    with torch.no_grad():
        ref = reference_image_reward(sd, pixels, tok["input_ids"], tok["attention_mask"])
        torch.testing.assert_close(ir_reward(to_tensor(pils), PROMPTS), ref, rtol=0.0, atol=0.05)


def test_image_reward_gradient_dtype_checkpointing(ir_dir, ir_reward):
    assert_grad_reaches_image(ir_reward)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        ref = ir_reward(x, PROMPTS)
        torch.testing.assert_close(ir_reward.loss(x, PROMPTS), 2.0 - ref)
    bf16 = ImageRewardReward(ir_dir / "ImageReward.pt", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    with torch.no_grad():
        out = bf16(x, PROMPTS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.0, atol=0.15)
    ckpt = ImageRewardReward(ir_dir, gradient_checkpointing=True)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ckpt(xa, PROMPTS).sum().backward()
    ir_reward(xb, PROMPTS).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # long prompts are truncated to 35 tokens
        assert torch.isfinite(ir_reward(x[:1], [LONG_PROMPT])).all()


def test_image_reward_refuses_foreign_keys(ir_dir, tmp_path):
    sd = torch.load(ir_dir / "ImageReward.pt", weights_only=True)
    with pytest.raises(ValueError, match="blip.itm_head.weight"):
        image_reward_to_hf_state_dicts({**sd, "blip.itm_head.weight": torch.zeros(2, 32)})
    bad = dict(sd)
    bad["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"] = torch.zeros(32, 7)
    torch.save(bad, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_text((ir_dir / "med_config.json").read_text())
    (tmp_path / "vocab.txt").write_text((ir_dir / "vocab.txt").read_text())
    with pytest.raises(ValueError, match="wrong shapes"):
        ImageRewardReward(tmp_path)


# ----------------------------------------------------------------------------- aesthetic


@pytest.fixture(scope="module")
def aesthetic_files(clip_dir, tmp_path_factory):
    """The LAION head as distributed (``torch.save`` of the MLP's state dict), for the tiny CLIP."""
    d = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(5)
    head = MLPHead(16)
    torch.save(head.state_dict(), d / "sac+logos+ava1-l14-linearMSE.pth")
    return clip_dir, d / "sac+logos+ava1-l14-linearMSE.pth"


def test_aesthetic_matches_reference(aesthetic_files):
    from transformers import CLIPImageProcessor, CLIPModel

    clip_dir, head_file = aesthetic_files
    reward = LaionAestheticReward(head_file, clip_model=clip_dir)
    assert reward.name == "aesthetic" and reward.loss_offset == 10.0 and reward.default_weight == 0.0
    sd = torch.load(head_file, weights_only=True)
    assert sorted(sd) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    model = CLIPModel.from_pretrained(clip_dir).eval()
    for hw in ((SIZE, SIZE), (48, 36)):
        pils = [smooth_image(*hw, seed=s) for s in (17, 18)]
        pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=pils, return_tensors="pt")[
            "pixel_values"
        ]
        with torch.no_grad():
            emb = F.normalize(features(model.get_image_features(pixel_values=pixels)), dim=-1)
            ref = emb
            for i in (0, 2, 4, 6, 7):
                ref = F.linear(ref, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"])
            ours = reward(to_tensor(pils), ["", ""])
        tol = 1e-4 if hw == (SIZE, SIZE) else 0.02
        torch.testing.assert_close(ours, ref.squeeze(-1), rtol=tol, atol=tol)
    assert_grad_reaches_image(reward)
    with pytest.raises(ValueError, match="expects 7-d"):
        torch.save(MLPHead(7).state_dict(), head_file.parent / "bad.pth")
        LaionAestheticReward(head_file.parent / "bad.pth", clip_model=clip_dir)


# ----------------------------------------------------------------------------- registry, options, errors


def test_registry_builds_by_name_and_source(clip_dir, hps_dir, clip_reward):
    names = list_rewards()
    for name in ("clip", "pickscore", "hpsv2", "imagereward", "aesthetic", "world-clip"):
        assert name in names
    expected = {
        "hpsv2": (1.0, 5.0),
        "imagereward": (2.0, 1.0),
        "pickscore": (30.0, 0.05),
        "clip": (100.0, 0.01),
    }
    for name, (offset, weight) in {**expected, "aesthetic": (10.0, 0.0)}.items():
        cls = reward_class(name)
        assert (cls.loss_offset, cls.default_weight) == (offset, weight)
    r = create_reward(f"clip:{clip_dir}", dtype="fp32", device="cpu")
    assert isinstance(r, CLIPScoreReward) and isinstance(r, Reward)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(r(x, PROMPTS), clip_reward(x, PROMPTS))
    assert isinstance(create_reward(f"hpsv2:{hps_dir}", dtype="bf16"), HPSv2Reward)
    with pytest.raises(KeyError, match="unknown reward"):
        create_reward("nope")
    with pytest.raises(ValueError, match="empty source"):
        create_reward("clip:")


def test_registry_hooks(monkeypatch):
    from compalign.rewards import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # registrations stay in this test
    register_reward("test-missing", "compalign.rewards.no_such_module:Nothing", overwrite=True)
    assert "test-missing" in list_rewards()  # registering never imports
    with pytest.raises(ImportError, match="no_such_module"):
        create_reward("test-missing")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("clip", CLIPScoreReward)
    with pytest.raises(ValueError, match="import path"):
        register_reward("x", "no-colon")

    class Const(Reward):
        name = "const"

        def forward(self, images, prompts):
            return torch.ones(images.shape[0])

    register_reward("test-const", Const, overwrite=True)
    r = create_reward("test-const")
    assert r.loss(torch.rand(3, 3, 8, 8), ["a"] * 3).tolist() == [-1.0] * 3  # offset 0 - score 1
    with pytest.raises(ValueError, match="float32 only"):
        create_reward("test-const", dtype="fp16")


def test_bad_inputs_and_options(clip_dir, clip_reward, tmp_path):
    x = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="prompt"):
        clip_reward(x, ["only one"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clip_reward(x * 255, PROMPTS)
    with pytest.raises(ValueError, match="4 dimensions"):
        clip_reward(x[0], PROMPTS)
    with pytest.raises(ValueError, match="list of strings"):
        clip_reward(x, "a red cube")
    assert clip_reward(x[:0], []).shape == (0,)
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="unknown dtype"):
        CLIPScoreReward(clip_dir, dtype="int8")
    assert resolve_dtype(None) is torch.float32 and resolve_dtype("half") is torch.float16
    with pytest.raises(FileNotFoundError):
        HPSv2Reward(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        ImageRewardReward(tmp_path / "missing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_torch_state_dict(tmp_path / "junk.pt")
    # unfrozen: parameters train, the model follows train()/eval()
    r = CLIPScoreReward(clip_dir, frozen=False)
    assert all(p.requires_grad for p in r.parameters())
    r.train()
    assert r.model.training


# ----------------------------------------------------------------------------- fully offline


@pytest.fixture
def no_network(monkeypatch):
    """Any hub download fails the test: a reward given local paths must not reach for the hub."""
    import huggingface_hub
    import transformers.utils.hub as tr_hub

    from compalign.rewards.real import common

    def refuse(*args, **kwargs):
        raise AssertionError(f"hub download attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(tr_hub, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(common, "hub_file", refuse)


def test_every_file_as_a_local_path_in_the_spec(aesthetic_files, pickscore_dirs, hps_dir, ir_dir, no_network):
    clip_dir, head = aesthetic_files
    x = torch.rand(2, 3, SIZE, SIZE)
    r = create_reward(f"aesthetic:{head},clip={clip_dir}")
    with torch.no_grad():
        torch.testing.assert_close(r(x, PROMPTS), LaionAestheticReward(head, clip_model=clip_dir)(x, PROMPTS))
    model_dir, proc_dir = pickscore_dirs
    r = create_reward(f"pickscore:{model_dir},processor={proc_dir}")
    with torch.no_grad():
        torch.testing.assert_close(r(x, PROMPTS), PickScoreReward(model_dir, processor=proc_dir)(x, PROMPTS))
    assert isinstance(create_reward(f"hpsv2:{hps_dir},tokenizer={hps_dir}"), HPSv2Reward)
    assert isinstance(create_reward(f"imagereward:{ir_dir},tokenizer={ir_dir}"), ImageRewardReward)


def test_a_missing_local_path_is_named_before_any_download(
    aesthetic_files, pickscore_dirs, tmp_path, no_network
):
    clip_dir, head = aesthetic_files
    model_dir, _ = pickscore_dirs
    for spec, missing in (
        (f"aesthetic:{head},clip={tmp_path}/no-clip", f"{tmp_path}/no-clip"),
        (f"aesthetic:{tmp_path}/head.pth,clip={clip_dir}", f"{tmp_path}/head.pth"),
        ("aesthetic:./no-head.pth", "./no-head.pth"),
        (f"pickscore:{model_dir},processor=models/laion/proc", "models/laion/proc"),
        (f"clip:{tmp_path}/nothing-here", f"{tmp_path}/nothing-here"),
        (f"hpsv2:{tmp_path}/hps.pt", f"{tmp_path}/hps.pt"),
        (f"imagereward:{tmp_path}/ir,tokenizer={tmp_path}/bert", f"{tmp_path}/bert"),
    ):
        with pytest.raises(FileNotFoundError, match="no such file or folder") as err:
            create_reward(spec)
        assert missing in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="takes no option 'colour'"):
        create_reward(f"clip:{clip_dir},colour=red")


def test_spec_options_split_only_before_key_equals():
    from compalign.rewards.registry import split_source

    assert split_source("/m/head.pth,clip=/m/clip") == ("/m/head.pth", {"clip": "/m/clip"})
    assert split_source("/m/a,b/head.pth") == ("/m/a,b/head.pth", {})  # a comma inside a path
    assert split_source("x, processor = /p ,tokenizer=/t") == ("x", {"processor": "/p", "tokenizer": "/t"})
    with pytest.raises(ValueError, match="no value"):
        split_source("x,clip=")


def test_reno_reports_a_missing_reward_folder_in_one_line(aesthetic_files, tmp_path, no_network):
    from typer.testing import CliRunner

    from compalign.cli import app

    _, head = aesthetic_files
    spec = f"aesthetic:{head},clip={tmp_path}/no-clip=1"
    r = CliRunner().invoke(app, ["reno", "a red circle", "--reward", spec, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"{tmp_path}/no-clip" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
