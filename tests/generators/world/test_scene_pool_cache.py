"""The scene pool lives in the per-user cache, says where, and shows its progress shard by shard."""

from __future__ import annotations

from pathlib import Path

from compalign.cache import cache_dir, scene_pool_dir
from compalign.generators.world import data as scene_data
from compalign.generators.world.data import ScenePool


def test_cache_folder_order(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPALIGN_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own" and scene_pool_dir() == tmp_path / "own" / "scene_pool"
    monkeypatch.delenv("COMPALIGN_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "compalign"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "compalign"


def test_default_pools_are_in_the_cache_wherever_the_command_runs(monkeypatch, tmp_path):
    from compalign.feedback.config import FeedbackConfig
    from compalign.generators.world.config import create_preset

    monkeypatch.setenv("COMPALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "cache" / "scene_pool"
    assert ScenePool(None, ["colors"], per_category=2).dir.parents[1] == root
    assert FeedbackConfig(output_dir="somewhere/run").pool_root == root
    assert create_preset("world-short", output_dir="elsewhere/run").pool_root == root
    assert FeedbackConfig(pool_dir="mine").pool_root == Path("mine")  # the option still wins


def test_build_says_where_and_moves_every_shard(monkeypatch, tmp_path, capsys):
    import tqdm.auto

    class EveryUpdate(tqdm.auto.tqdm):  # draws every update, however fast
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "mininterval": 0, "miniters": 1})

    monkeypatch.setattr(scene_data, "tqdm", EveryUpdate)  # the name the scene pool draws its bar with
    pool = ScenePool(tmp_path / "p", ["colors"], per_category=6, shard_size=2)
    assert pool.build(progress=True) > 0
    err = capsys.readouterr().err
    assert f"rendering 6 training scenes into {pool.dir}" in err
    assert all(f"{n}/6" in err for n in (2, 4, 6)), err
    assert pool.build(progress=True) == 0.0 and capsys.readouterr().err == ""  # built once
