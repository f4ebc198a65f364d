from __future__ import annotations

import pytest

from tests.factories import write_clip_folder, write_image_reward


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A transformers CLIP folder (model + tokenizer + preprocessor), like the LAION hub repo."""
    return write_clip_folder(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    """ImageReward as distributed (``ImageReward.pt`` + ``med_config.json``) plus a BERT vocab.txt."""
    return write_image_reward(tmp_path_factory.mktemp("imagereward"))
