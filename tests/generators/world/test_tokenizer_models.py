from __future__ import annotations

import pytest
import torch

from compalign.generators.world.config import create_preset, list_presets
from compalign.generators.world.models import WorldArch, build_components, count_parameters
from compalign.generators.world.tokenizer import MAX_LENGTH, build_tokenizer, build_vocab, tokenize
from compalign.world.grammar import VOCABULARY, Entity, Relation, Scene, to_prompt


def _longest_prompt() -> str:
    a = Entity("triangle", "purple", "large", "striped")
    b = Entity("circle", "red", "medium", "striped")
    c = Entity("square", "blue", "medium", "striped")
    d = Entity("cross", "green", "large", "striped")
    scene = Scene((a, b, c, d), (Relation("left of", 0, 1), Relation("right of", 2, 3)))
    return to_prompt(scene)


def test_vocabulary_covers_grammar():
    vocab = build_vocab()
    assert set(VOCABULARY) <= set(vocab)
    assert [vocab[t] for t in ("<pad>", "<bos>", "<eos>", "<unk>")] == [0, 1, 2, 3]


def test_tokenize_and_round_trip_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = build_tokenizer()
    prompt = _longest_prompt()
    ids, mask = tokenize(tok, [prompt, "", "A Red circle.", "a zebra"])
    assert ids.shape == (4, MAX_LENGTH)
    assert int(mask[0].sum()) == len(prompt.split()) + 2 <= MAX_LENGTH  # nothing truncated
    assert ids[1, :2].tolist() == [tok.bos_token_id, tok.eos_token_id] and int(mask[1].sum()) == 2
    assert tok.decode(ids[2], skip_special_tokens=True) == "a red circle"
    assert ids[3, 2].item() == tok.unk_token_id
    tok.save_pretrained(tmp_path / "tok")
    from transformers import PreTrainedTokenizerFast

    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok", local_files_only=True)
    ids2, mask2 = tokenize(tok2, [prompt, "", "A Red circle.", "a zebra"])
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)


@pytest.mark.parametrize("text_encoder", ["clip", "t5", "clip+t5"])
def test_components_build(text_encoder):
    arch = WorldArch(
        block_out_channels=(16, 32),
        attention_levels=(False, True),
        text_hidden_size=32,
        text_layers=1,
        text_heads=2,
        text_encoder=text_encoder,
    )
    c = build_components(arch)
    assert c["unet"].config.in_channels == 12 and c["unet"].config.sample_size == 16
    width = 64 if text_encoder == "clip+t5" else 32  # the dual encoder's features: both widths
    assert c["unet"].config.cross_attention_dim == width == arch.text_width
    ids = torch.tensor([[1, 5, 6, 2, 0]])
    out = c["text_encoder"](input_ids=ids, attention_mask=(ids > 0).long()).last_hidden_state
    assert out.shape == (1, 5, width)


def test_dual_text_encoder_saves_loads_and_joins_both_encoders(tmp_path):
    """A pipeline with the dual encoder round-trips offline; its features are CLIP's then T5's."""
    from compalign.generators.world.generator import WorldGenerator
    from tests.factories import tiny_pipeline

    pipe = tiny_pipeline(text_encoder="clip+t5")
    te = pipe.text_encoder
    from compalign.generators.world.tokenizer import tokenize

    ids, mask = tokenize(pipe.tokenizer, ["a red circle to the left of a blue square"])
    both = te(input_ids=ids, attention_mask=mask).last_hidden_state
    clip = te.clip(input_ids=ids, attention_mask=mask).last_hidden_state
    t5 = te.t5(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(both, torch.cat([clip, t5], dim=-1))
    pipe.save_pretrained(tmp_path / "m")
    gen = WorldGenerator.from_pretrained(tmp_path / "m")
    assert type(gen.pipe.text_encoder).__name__ == "DualTextEncoder"
    noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompt = ["a red circle to the left of a blue square"]
    assert torch.equal(gen.generate(prompt, noise=noise), pipe.denoise(noise, prompt))


def test_bad_arch():
    with pytest.raises(ValueError):
        WorldArch(block_out_channels=(16, 32), attention_levels=(True,))
    with pytest.raises(ValueError):
        WorldArch(text_encoder="bert")
    with pytest.raises(ValueError):
        WorldArch(norm_num_groups=5)


def test_presets_parse_and_fit_the_size_budget():
    names = list_presets()
    assert {"world-base", "world-onestep"} <= set(names) and len(names) >= 5
    total = 0
    from compalign.generators import shipped_models

    shipped = shipped_models()
    assert {"world-base", "world-onestep", "world-web", "world-base-v2"} <= set(shipped)
    for name in shipped:  # the models the package ships (phase presets and candidates are not shipped)
        cfg = create_preset(name)
        if cfg.mode == "distill":  # a student has its teacher's arch; a run-folder teacher is a world-base
            arch = create_preset(cfg.teacher if cfg.teacher in names else "world-base").arch
        else:
            arch = cfg.arch
        c = build_components(arch)
        total += count_parameters(c["unet"]) + count_parameters(c["text_encoder"])
    assert total * 2 <= 40e6  # fp16 bytes of all shipped models
    cfg = create_preset("world-base", max_steps=7, **{"arch.sample_steps": 9})
    assert cfg.max_steps == 7 and cfg.arch.sample_steps == 9
    assert create_preset("world-base").name == "world-base"
    assert create_preset("world-base", name="world-base-copy").name == "world-base-copy"  # `--set name=`
    with pytest.raises(KeyError):
        create_preset("world-nope")
    with pytest.raises(ValueError):
        create_preset("world-base", not_a_field=1)
    with pytest.raises(ValueError):
        create_preset("world-base", categories=["colour"])


def test_a_saved_dual_text_pipeline_loads_in_a_fresh_process(tmp_path):
    """diffusers imports no component module by itself: loading must not depend on what the
    process happened to import before (a fresh ``create_generator`` of a clip+t5 model)."""
    import subprocess
    import sys

    from tests.factories import tiny_pipeline

    tiny_pipeline(text_encoder="clip+t5").save_pretrained(tmp_path / "m")
    code = (
        "import sys; from compalign.generators import create_generator; "
        "print(type(create_generator(sys.argv[1]).pipe.text_encoder).__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("DualTextEncoder")
