"""``compalign iterate``'s options: derived from `IterateConfig` and its nested trainer configs, the
earlier spellings hidden aliases that build the same config."""

from __future__ import annotations

import pytest

OLD = [
    "--reward-lr", "1e-3", "--reward-head-lr", "1e-4", "--feedback-steps", "3", "--feedback-lr", "2e-4",
    "--reg-type", "distance", "--reg-weight", "0.5", "--pool-dir", "/tmp/pool", "--pool-per-category", "4",
    "--threads", "1", "--force-stage", "feedback", "--force-stage", "1:rewards", "--pairs-with-tie-breaks",
]  # fmt: skip
NEW = [
    "--reward-learning-rate", "1e-3", "--reward-head-learning-rate", "1e-4", "--feedback-max-steps", "3",
    "--feedback-learning-rate", "2e-4", "--feedback-reg-type", "distance", "--feedback-reg-weight", "0.5",
    "--feedback-pool-dir", "/tmp/pool", "--feedback-pool-per-category", "4", "--num-threads", "1",
    "--force-stages", "feedback", "--force-stages", "1:rewards", "--no-pairs-decided-only",
]  # fmt: skip


@pytest.fixture
def built(monkeypatch, cli, tmp_path):
    """args -> (the `IterateConfig` the command builds, or None; the result); nothing runs."""
    import compalign.iterate.run as run_module

    got = []

    def fake_run(config):
        got.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(run_module, "run_iterate", fake_run)

    def build(*args):
        got.clear()
        r = cli("iterate", "--workdir", tmp_path / "wd", *args)
        return (got[0] if got else None), r

    return build


def test_old_spellings_build_the_same_config(built):
    old, new = built(*OLD)[0], built(*NEW)[0]
    assert old is not None and old.to_dict() == new.to_dict()
    assert old.feedback_training.max_steps == 3 and old.reward_training.learning_rate == 1e-3
    assert old.feedback_training.pool_dir == "/tmp/pool" and old.num_threads == 1
    assert old.force_stages == ["feedback", "1:rewards"] and not old.pairs_decided_only
    default = built()[0]
    assert default.feedback_training.max_steps == 150 and default.noise_optimization.iterations == 20
    assert default.feedback_training.stop_range == [0.75, 1.0] and default.reward_weights == {}


def test_help_names_the_fields_and_hides_old_spellings(cli):
    r = cli("iterate", "--help")
    assert r.exit_code == 0
    for flag in ("--feedback-max-steps", "--reward-learning-rate", "--reno-iterations", "--num-threads"):
        assert flag in r.stdout
    for old in ("--feedback-steps", "--reward-lr", "--reg-type", "--threads", "--pairs-with-tie-breaks"):
        assert old not in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--feedback-steps", "3", "--feedback-max-steps", "4"],
            "give --feedback-max-steps or --feedback-steps",
        ),
        (["--threads", "1", "--num-threads", "2"], "give --num-threads or --threads, not both"),
        (["--reward-weights", "attribute_binding"], "--reward-weights: reward weight 'attribute_binding'"),
        (["--reward-weights", "attribute_binding=1", "attribute_binding=2"], "given twice"),
    ],
)
def test_option_conflicts_are_one_line_errors(built, args, message):
    config, r = built(*args)
    assert config is None and r.exit_code == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_reward_weights_take_several_values(built):
    config = built("--reward-weights", "attribute_binding=2", "spatial_relationship=0", "--seed", "1")[0]
    assert config.reward_weights == {"attribute_binding": 2.0, "spatial_relationship": 0.0}
    assert config.seed == 1
