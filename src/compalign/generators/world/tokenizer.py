"""Word-level tokenizer over the world vocabulary, built in code (no download, works offline).

Every word of the grammar is one token; words outside the grammar map to ``<unk>``. Prompts are
lower-cased, commas and a final period are dropped, and each prompt becomes
``<bos> words... <eos>`` padded with ``<pad>`` to `MAX_LENGTH`. The tokenizer is a
`transformers` fast tokenizer, so it saves with `save_pretrained` (``tokenizer.json``) and loads
with `from_pretrained` inside a pipeline folder like any other.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from compalign.world.grammar import VOCABULARY

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
# The longest grammar prompt has 29 words (two relation clauses of fully specified objects);
# with <bos> and <eos> that is 31 tokens.
MAX_LENGTH = 32


def build_vocab() -> dict[str, int]:
    """Special tokens first (pad 0, bos 1, eos 2, unk 3), then the grammar words, sorted."""
    words = list(SPECIAL_TOKENS) + sorted(VOCABULARY)
    return {w: i for i, w in enumerate(words)}


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    vocab = build_vocab()
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(",", " "), normalizers.Replace(".", " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
        padding_side="right",
    )


def tokenize(tokenizer, prompts: list[str], device=None):
    """`(input_ids, attention_mask)` as long tensors `[B, max_length]` (padded, truncated)."""
    enc = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
