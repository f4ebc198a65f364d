"""``compalign iterate`` end to end on tiny models: artifacts, skipping, resuming, expansion,
people mode, settings conflicts and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from compalign.iterate.config import STAGES
from tests.iterate.conftest import iterate_args

ASPECTS = ("attribute_binding", "spatial_relationship", "non_spatial_relationship")


def read(path):
    return json.loads(Path(path).read_text())


def stages_of(workdir, k=1) -> dict:
    return read(Path(workdir) / "state.json")["iterations"].get(str(k), {})


def snapshot(root: Path) -> dict[str, int]:
    skip = {"state.json", ".iterate.lock"}
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


@pytest.fixture(scope="module")
def done(env, cli, tmp_path_factory):
    """One iteration, interrupted twice: --stop-after rank, then a crash inside feedback training
    after its first step; the third call finishes. Returns (workdir, outputs of the calls)."""
    from compalign.iterate.stages import feedback as feedback_stage

    wd = tmp_path_factory.mktemp("iterate") / "wd"
    first = cli(*iterate_args(env, wd, "--stop-after", "rank"))
    real = feedback_stage.train_feedback

    def crash(config, resume=True, stop_at_step=None):
        real(config, resume=resume, stop_at_step=1)
        raise RuntimeError("simulated crash in feedback training")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(feedback_stage, "train_feedback", crash)
        second = cli(*iterate_args(env, wd))
    third = cli(*iterate_args(env, wd))
    return wd, (first, second, third)


def test_stop_after_and_crash_resume_at_the_stage(done):
    wd, (first, second, third) = done
    assert first.exit_code == 0, first.output
    assert "stopped after iteration 1, stage rank" in first.stdout
    # the crash: stages before feedback finished, feedback left running with a checkpoint
    assert isinstance(second.exception, RuntimeError), second.output
    assert (
        "gallery: done earlier, skipped" in second.stderr and "rank: done earlier, skipped" in second.stderr
    )
    assert "pairs: starting" in second.stderr
    # the third call resumes at feedback and never redoes a finished stage
    assert third.exit_code == 0, third.output
    for s in ("gallery", "rank", "pairs", "rewards"):
        assert f"{s}: done earlier, skipped" in third.stderr
    assert "feedback: resuming" in third.stderr
    state = stages_of(wd)
    assert list(state) == list(STAGES) and all(e["status"] == "done" for e in state.values())
    assert state["feedback"]["sessions"] == 2 and state["gallery"]["sessions"] == 1
    record = read(wd / "iter_1" / "base" / "training.json")
    assert [s["from_step"] for s in record["sessions"]] == [0, 1] and record["steps"] == 2


def test_one_iteration_writes_every_artifact(done):
    wd, _ = done
    it = wd / "iter_1"
    for a in ASPECTS:
        recs = read(it / "gallery" / a / "gallery.json")
        assert all(r["rank"] and {"image_good", "image_bad", "image_tinybase"} <= set(r) for r in recs)
        assert any(r["rank"][0] == 1 for r in recs)  # good (model 1) first
        lines = (it / "pairs" / f"{a}.jsonl").read_text().splitlines()
        assert {json.loads(ln)["split"] for ln in lines} == {"train", "heldout"}
        assert (it / "rewards" / a / "final" / "composition_reward.json").is_file()
    assert (it / "base" / "model_index.json").is_file() and not (it / "feedback" / "final").exists()
    assert (it / "feedback" / "curves.png").is_file()
    assert {p.stem for p in (it / "eval").glob("*.json")} == {"good", "bad", "tinybase", "iter1"}
    assert read(it / "eval" / "good.json")["result"]["overall"] == 1.0
    # single_object (evaluated by default: the reward-hacking check) is reported next to the aspects
    assert "single_object" in read(it / "eval" / "iter1.json")["result"]["categories"]
    assert read(it / "eval" / "bad.json")["result"]["overall"] == 0.0
    assert (it / "reno" / "plain.json").is_file() and (it / "reno" / "reno.json").is_file()
    state = stages_of(wd)
    rewards = state["rewards"]["outputs"]
    assert all(rewards[a]["heldout_pairs"] > 0 and 0 <= rewards[a]["heldout_accuracy"] <= 1 for a in ASPECTS)
    reno = state["reno"]["outputs"]
    assert reno["generator"] == "onestep" and "multi-step" in reno["note"]
    # ReNO runs the composition rewards at 0.1 x their feedback weight (the step-size match)
    assert state["reno"]["settings"]["weights"] == {a: 0.1 for a in ASPECTS}
    reno_rewards = read(it / "reno" / "reno.json")["key"]["reno"]["rewards"]
    assert {a: v["weight"] for a, v in reno_rewards.items()} == {a: 0.1 for a in ASPECTS}
    check = state["evaluate"]["outputs"]["reward_check"]
    assert check["models"] == ["tinybase", "iter1"] and set(check["aspects"]) == set(ASPECTS)
    # every evaluation keeps its first-seed images; the check scores those, it renders nothing
    assert check["rendered"] == [] and set(check["files"]) == {"tinybase", "iter1"}
    for m in ("good", "bad", "tinybase", "iter1"):
        recs = [r for r in read(it / "eval" / f"{m}.json")["result"]["records"] if r["seed"] == check["seed"]]
        with np.load(it / "eval" / f"{m}.images.npz") as z:
            assert z["images"].shape == (len(recs), 32, 32, 3) and z["images"].dtype == np.uint8
            assert z["prompts"].tolist() == [r["prompt"] for r in recs]
    with np.load(it / "eval" / "good.images.npz") as z:  # exact renders: the images that passed
        assert z["images"].max() > 0
    evals = {m: read(it / "eval" / f"{m}.json")["result"]["records"] for m in check["models"]}
    for a, v in check["aspects"].items():
        assert v["images"] > 0 and set(v["reward"]) == {"tinybase", "iter1"}
        # the check's images are the evaluation's first-seed images: the same verdicts
        for m in check["models"]:
            recs = [r for r in evals[m] if r["seed"] == check["seed"] and _aspect(r["category"]) == a]
            assert len(recs) == v["images"] and v["accuracy"][m] == sum(r["passed"] for r in recs) / len(recs)
        assert v["decided_pairs"] <= v["images"]
        assert v["agreement"] is None or 0 <= v["agreement"] <= 1
    report = (it / "report.md").read_text()
    for section in ("Held-out accuracy", "Do the reward models see", "ReNO", "Reward models", "Stages"):
        assert f"## {section}" in report or section in report
    assert "feedback/curves.png" in report and "ReNO runs on onestep" in report
    assert "![samples](plots/samples.png)" in report  # both bases' held-out images, side by side
    for png in ("accuracy", "reno", "reward_accuracy", "feedback_rewards", "samples"):
        assert (it / "plots" / f"{png}.png").stat().st_size > 1000
    assert "iter_1/report.md" in (wd / "report.md").read_text()
    assert "mean of the aspects" in report and "; single_object " in report
    assert read(it / "summary.json")["base_after"] == "iter1"


def _aspect(category: str) -> str:
    from compalign.world.suites import CATEGORY_ASPECT

    return CATEGORY_ASPECT[category]


def test_reward_check_verdict_names_what_happened():
    from compalign.iterate.report import reward_check_verdict

    assert "exploited" in reward_check_verdict(0.3, -0.05, 0.7)
    assert "rose together" in reward_check_verdict(0.3, 0.05, 0.8)
    assert "did not move" in reward_check_verdict(-0.1, 0.05, None)
    assert "not compositional" in reward_check_verdict(0.2, 0.0, None)
    assert "near chance (50%)" in reward_check_verdict(0.3, -0.05, 0.5)
    assert "near chance" not in reward_check_verdict(0.3, -0.05, 0.75)


def test_same_command_again_does_nothing_new(done, env, cli):
    wd, _ = done
    before, state_before = snapshot(wd), stages_of(wd)
    r = cli(*iterate_args(env, wd))
    assert r.exit_code == 0, r.output
    assert "nothing to do" in r.stdout
    assert all(f"{s}: done earlier, skipped" in r.stderr for s in STAGES)
    assert snapshot(wd) == before and stages_of(wd) == state_before


def test_changed_settings_are_refused(done, env, cli):
    wd, _ = done
    before = snapshot(wd)
    r = cli(*iterate_args(env, wd, "--reward-epochs", "2"))
    assert r.exit_code == 2
    assert "stage rewards finished with other settings (epochs: 1 -> 2)" in r.stderr
    assert "--force-stage 1:rewards" in r.stderr
    assert snapshot(wd) == before


def test_feedback_stop_range_reaches_the_refl_run(done, env, cli, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(done[0], wd)
    before = read(wd / "iter_1" / "base" / "training.json")
    assert before["config"]["stop_range"] == [0.75, 1.0]
    r = cli(*iterate_args(env, wd, "--feedback-stop-range", "0,1"))
    assert r.exit_code == 2 and "stage feedback finished with other settings (stop_range" in r.stderr
    r = cli(*iterate_args(env, wd, "--feedback-stop-range", "0,1", "--force-stage", "1:feedback"))
    assert r.exit_code == 0, r.output
    after = read(wd / "iter_1" / "base" / "training.json")
    assert after["config"]["stop_range"] == [0, 1] and after["settings"]["stop_indices"] == [0, 1]
    assert stages_of(wd)["feedback"]["settings"]["stop_range"] == [0, 1]


def test_raft_feedback_learns_the_galleries_best_images(done, env, cli, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(done[0], wd)
    raft = ["--feedback-method", "raft", "--raft-max-steps", "2", "--raft-batch-size", "2",
            "--raft-reg-batch-size", "2", "--raft-train-text-encoder"]  # fmt: skip
    r = cli(*iterate_args(env, wd, *raft))
    assert r.exit_code == 2 and "stage feedback finished with other settings" in r.stderr
    r = cli(*iterate_args(env, wd, *raft, "--force-stage", "1:feedback"))
    assert r.exit_code == 0, r.output
    state = stages_of(wd)
    fb = state["feedback"]
    assert fb["settings"]["method"] == "raft" and fb["settings"]["steps"] == 2
    assert fb["settings"]["train_text_encoder"] is True
    out = fb["outputs"]
    assert out["method"] == "raft" and set(out["selection"]) == set(ASPECTS)
    for v in out["selection"].values():
        # one pick per train prompt (the gallery's held-out prompts are never candidates), among 3 models
        assert v["selected"] == v["prompts"] and v["candidates"] == 3 * v["prompts"]
        assert set(v["selected_by_source"]) <= {"good", "bad", "tinybase"}
    record = read(wd / "iter_1" / "base" / "training.json")
    assert record["config"]["train_text_encoder"] is True
    assert record["mode"] == "raft" and record["config"]["rewards"] == {
        a: f"composition:{wd.resolve() / 'iter_1' / 'rewards' / a / 'final'}" for a in ASPECTS
    }
    assert not (wd / "iter_1" / "feedback").exists()  # the ReFL run was removed with the forced stage
    assert all(state[s]["status"] == "done" for s in ("evaluate", "reno", "report"))
    assert "## Feedback training: RAFT" in (wd / "iter_1" / "report.md").read_text()
    r = cli(*iterate_args(env, tmp_path / "other", "--feedback-method", "dpo"))
    assert r.exit_code == 2 and "unknown --feedback-method 'dpo'" in r.stderr


def test_reno_steps_optimise_the_multi_step_base_itself(done, env, cli, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(done[0], wd)
    r = cli(*iterate_args(env, wd, "--reno-steps", "2"))
    assert r.exit_code == 2 and "stage reno finished with other settings" in r.stderr
    r = cli(*iterate_args(env, wd, "--reno-steps", "2", "--force-stage", "1:reno"))
    assert r.exit_code == 0, r.output
    state = stages_of(wd)
    reno = state["reno"]["outputs"]
    assert reno["generator"] == "iter1" and "at 2 DDIM steps" in reno["note"]
    assert state["reno"]["settings"]["steps"] == 2 and state["reno"]["settings"]["model"] == "the new base"
    # the plain row is the base at 2 steps: its own key, not the evaluate stage's default-step result
    plain = read(wd / "iter_1" / "reno" / "plain.json")
    assert plain["key"]["steps"] == 2 and "copied_from" not in plain
    assert read(wd / "iter_1" / "reno" / "reno.json")["key"]["steps"] == 2
    assert "ReNO runs on the new base iter1 itself" in (wd / "iter_1" / "report.md").read_text()
    r = cli(*iterate_args(env, tmp_path / "other", "--reno-steps", "0"))
    assert r.exit_code == 2 and "--reno-steps must be >= 1" in r.stderr


def test_reward_check_renders_again_without_stored_images(done, tmp_path):
    """Without stored evaluation images (work folders from before they were kept) the reward
    check renders the two bases' images again: the same verdicts, and the same rewards up to the
    stored images' 8-bit rounding."""
    from compalign.iterate.config import IterateConfig
    from compalign.iterate.loop import IterateRun, State
    from compalign.iterate.report import sample_grid

    wd = tmp_path / "wd"
    shutil.copytree(done[0], wd)
    stored = stages_of(wd)["evaluate"]["outputs"]["reward_check"]
    config = IterateConfig.from_dict({**read(wd / "state.json")["config"], "workdir": str(wd)})
    run = IterateRun(config, log=lambda m: None)
    run.state = State(wd)
    rendered = run._reward_check(1)  # no evaluation files given: nothing stored to read
    assert rendered["rendered"] == ["tinybase", "iter1"] and rendered["files"] == {}
    assert sample_grid(run, rendered, tmp_path / "samples.png") is None  # no stored images to show
    for a in ASPECTS:
        b, c = stored["aspects"][a], rendered["aspects"][a]
        assert (b["images"], b["accuracy"], b["decided_pairs"]) == (
            c["images"],
            c["accuracy"],
            c["decided_pairs"],
        )
        for m in stored["models"]:
            assert c["reward"][m] == pytest.approx(b["reward"][m], abs=1e-2)


def test_second_iteration_expands_the_gallery(done, env, cli, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(done[0], wd)
    r = cli(*iterate_args(env, wd, "--iterations", "2"))
    assert r.exit_code == 0, r.output
    assert all(f"[iterate 1/2] {s}: done earlier, skipped" in r.stderr for s in STAGES)
    it = wd / "iter_2"
    for a in ASPECTS:
        recs = read(it / "gallery" / a / "gallery.json")
        assert all("image_iter1" in r and len(r["initial_rank"]) == 3 and len(r["rank"]) == 4 for r in recs)
        assert list(recs[0])[2:6] == ["image_good", "image_bad", "image_tinybase", "image_iter1"]
        # iteration 1's gallery is left as it was
        assert all("image_iter1" not in r for r in read(wd / "iter_1" / "gallery" / a / "gallery.json"))
    evals = {p.stem: read(p) for p in (it / "eval").glob("*.json")}
    assert set(evals) == {"good", "bad", "tinybase", "iter1", "iter2"}
    assert {n for n, e in evals.items() if "copied_from" in e} == {"good", "bad", "tinybase", "iter1"}
    # iteration 2's reward check scores iter1's stored images (copied with its evaluation)
    assert (it / "eval" / "iter1.images.npz").is_file()
    assert stages_of(wd, 2)["evaluate"]["outputs"]["reward_check"]["rendered"] == []
    assert read(wd / "iter_2" / "base" / "training.json")["base"] == str((wd / "iter_1" / "base").resolve())
    report = (it / "report.md").read_text()
    assert "initial_rank" in report and "![progress](plots/progress.png)" in report
    assert (it / "plots" / "progress.png").is_file()


def test_people_mode_waits_then_continues(env, cli, tmp_path):
    from compalign.gallery.format import load_gallery
    from compalign.ranking.store import DB_FILE, RankingStore

    wd = tmp_path / "wd"
    args = iterate_args(env, wd, "--rank", "people", "--stop-after", "pairs")
    r = cli(*args)
    assert r.exit_code == 3, r.output
    assert "waiting for people's rankings of iteration 1" in r.stderr
    for a in ASPECTS:
        assert f"compalign rank serve {wd / 'iter_1' / 'gallery' / a}" in r.stderr
    assert stages_of(wd)["rank"]["status"] == "waiting" and "pairs" not in stages_of(wd)
    # still waiting: nothing ranked yet (and the gallery is not rendered again)
    r = cli(*args)
    assert r.exit_code == 3 and "gallery: done earlier, skipped" in r.stderr
    # people rank every record (good > tinybase > bad), then the same command continues
    for a in ASPECTS:
        g = load_gallery(wd / "iter_1" / "gallery" / a)
        store = RankingStore(g.root / DB_FILE)
        for rec in g.records:
            store.add_ranking("ann", rec.index, rec.models, ["good", "tinybase", "bad"], [])
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "stopped after iteration 1, stage pairs" in r.stdout
    assert stages_of(wd)["rank"]["status"] == "done"
    g = load_gallery(wd / "iter_1" / "gallery" / ASPECTS[0])
    assert g.ranks["method"] == "people" and all(rec.rank == [1, 3, 2] for rec in g.records)
    # forcing a stage redoes it; forcing the gallery would remove people's rankings: refused
    r = cli(*iterate_args(env, wd, "--rank", "people", "--force-stage", "pairs", "--stop-after", "pairs"))
    assert r.exit_code == 0, r.output
    assert "pairs: forced" in r.stderr and "pairs: starting" in r.stderr
    r = cli(*iterate_args(env, wd, "--rank", "people", "--force-stage", "gallery", "--stop-after", "pairs"))
    assert r.exit_code == 2 and "holds people's rankings" in r.stderr
    assert (wd / "iter_1" / "gallery" / ASPECTS[0] / DB_FILE).is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--iterations", "0"], "--iterations must be >= 1"),
        (["--aspects", "colour"], "unknown aspect 'colour'"),
        (["--rank", "crowd"], "unknown --rank 'crowd'"),
        (["--gallery-models", "nope-model"], "unknown model 'nope-model'"),
        (["--gallery-models", "iter1=testworld:good"], "kept for the base of iteration 1"),
        (["--stop-after", "polish"], "--stop-after 'polish': expected STAGE or K:STAGE"),
        (["--force-stage", "3:rewards"], "iteration 3 > --iterations 1"),
        (
            ["--reward-backbone", "world-clip:/nonexistent/clip"],
            "--reward-backbone world-clip:/nonexistent/clip",
        ),
        (["--reward-weights", "spatial_relationship=x"], "is not a number"),
        (["--reward-weights", "attribute=1"], "'attribute' is not one of the aspects"),
        (["--eval-per-category", "99", "--reward-heldout-per-category", "5"], "must not overlap"),
        (["--feedback-steps", "0"], "feedback_training: max_steps must be >= 1, got 0"),
        (["--seeds-per-prompt", "0"], "--seeds-per-prompt must be >= 1"),
        (["--feedback-stop-range", "0.5"], "--feedback-stop-range '0.5': expected LO,HI"),
        (["--reno-reward-scale", "0"], "--reno-reward-scale must be > 0, got 0.0"),
        (["--feedback-stop-range", "0.5,0.2"], "feedback_training: stop_range fractions must satisfy"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(env, cli, tmp_path, extra, message):
    wd = tmp_path / "wd"
    r = cli(*iterate_args(env, wd, *extra))
    assert r.exit_code == 2, r.output
    assert message in r.stderr and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not wd.exists()


def test_bad_workdir_and_reno_model(env, cli, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = cli(*iterate_args(env, f))
    assert r.exit_code == 2 and "--workdir must be a folder" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = cli(*iterate_args(env, other))
    assert r.exit_code == 2 and "not an iterate work folder" in r.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    r = cli(*iterate_args(env, tmp_path / "wd", "--reno-model", env["base"]))
    assert r.exit_code == 2 and "multi-step generator; ReNO needs a one- or two-step one" in r.stderr
    r = cli("iterate", "--estimate")
    assert r.exit_code == 0 and "total" in r.stdout
    r = cli("iterate", "--iterations", "2")
    assert r.exit_code == 2 and "give --workdir DIR" in r.stderr


def test_seeds_per_prompt_repeats_prompts_and_keeps_train_first():
    from compalign.iterate.config import IterateConfig
    from compalign.iterate.loop import gallery_prompts
    from compalign.pairs.make import prompt_split

    one = IterateConfig(per_category=3, reward_heldout_per_category=2)
    two = IterateConfig(per_category=3, reward_heldout_per_category=2, seeds_per_prompt=2)
    p1, c1, n1 = gallery_prompts(one, "spatial_relationship")
    p2, c2, n2 = gallery_prompts(two, "spatial_relationship")
    assert n2 == 2 * n1 and len(p2) == 2 * len(p1) and len(c2) == len(p2)
    assert p2 == [p for p in p1[:n1] for _ in range(2)] + [p for p in p1[n1:] for _ in range(2)]
    assert c2 == [c for c in c1[:n1] for _ in range(2)] + [c for c in c1[n1:] for _ in range(2)]
    assert {prompt_split(p) for p in p2[:n2]} == {"train"}
    assert {prompt_split(p) for p in p2[n2:]} == {"heldout"}


def test_default_evaluation_adds_single_object_unless_told_not_to():
    from compalign.iterate.config import IterateConfig

    cats = IterateConfig().evaluation_categories()
    assert cats[-1] == "single_object" and "spatial" in cats
    assert "single_object" not in IterateConfig(eval_single_object=False).evaluation_categories()
    assert IterateConfig(eval_categories=["color"]).evaluation_categories() == ["color"]


def test_no_train_pairs_says_why(tmp_path):
    """A gallery whose only ranked record has a held-out prompt, or whose models tie: the pairs
    stage's error names what happened."""
    from compalign.gallery.format import load_gallery
    from compalign.iterate.loop import no_train_pairs_message
    from compalign.pairs.make import make_pairs
    from tests.factories import build_gallery, world_prompts

    held = build_gallery(tmp_path / "held", world_prompts(n_train=0, n_heldout=1))
    held.set_tiers(held.records[0], [["good"], ["bad", "bad2"]])
    held.save()
    counts = make_pairs([held.root], tmp_path / "held.jsonl", "relative")["spatial_relationship"]
    assert counts["train"] == 0 and counts["heldout"] == 2
    message = no_train_pairs_message(1, "spatial_relationship", counts)
    assert "2 pair(s) comes from held-out prompts" in message and "tied" not in message

    tied = build_gallery(tmp_path / "tied", world_prompts(n_train=1, n_heldout=0))
    g = load_gallery(tied.root)
    g.set_tiers(g.records[0], [["good", "bad", "bad2"]])
    g.save()
    counts = make_pairs([tied.root], tmp_path / "tied.jsonl", "relative")["spatial_relationship"]
    assert counts == {**counts, "pairs": 0, "train": 0, "heldout": 0, "tied_skipped": 3}
    assert "tied on every train record" in no_train_pairs_message(1, "spatial_relationship", counts)


ITERATE = (
    "import sys\n"
    "from compalign.generators import registry\n"
    "from tests.iterate.conftest import RenderGenerator\n"
    "registry.register_generator('testworld', lambda rest, **kw: RenderGenerator(rest))\n"
    "from compalign.cli import main\n"
    "sys.argv = ['compalign', *sys.argv[1:]]\n"
    "main()"
)


@pytest.mark.slow  # a whole tiny iteration in its own processes (~1-2 min on 2 cores)
@pytest.mark.timeout(900)
def test_kill_9_during_reward_training_then_resume_gives_the_same_iteration(done, env, tmp_path):
    """`compalign iterate` killed (SIGKILL) while it trains the reward models, then run again:
    pairs, reward models, the fine-tuned base and its evaluation equal those of the `done` run
    (interrupted differently, at clean points)."""
    from safetensors.torch import load_file

    from tests.killing import kill_when, run_python

    ref, _ = done
    wd = tmp_path / "wd"
    args = ["-c", ITERATE, *iterate_args(env, wd)]
    rewards = wd / "iter_1" / "rewards"
    kill_when(args, lambda: any(rewards.glob("*/checkpoints/step_*")), timeout=600)
    assert stages_of(wd)["rewards"]["status"] == "running"
    run_python(args, timeout=600)
    assert all(e["status"] == "done" for e in stages_of(wd).values())
    a, b = ref / "iter_1", wd / "iter_1"
    for aspect in ASPECTS:
        assert (a / "pairs" / f"{aspect}.jsonl").read_bytes() == (
            b / "pairs" / f"{aspect}.jsonl"
        ).read_bytes()
        ra = load_file(str(a / "rewards" / aspect / "final" / "model.safetensors"))
        rb = load_file(str(b / "rewards" / aspect / "final" / "model.safetensors"))
        assert ra.keys() == rb.keys() and all(np.array_equal(ra[k].numpy(), rb[k].numpy()) for k in ra)
    for f in sorted((a / "base").rglob("*.safetensors")):
        wa, wb = load_file(str(f)), load_file(str(b / "base" / f.relative_to(a / "base")))
        assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa), f
    ea, eb = (read(x / "eval" / "iter1.json")["result"] for x in (a, b))
    assert ea["records"] == eb["records"] and ea["overall"] == eb["overall"]


def test_config_nests_the_trainers_configs_and_reads_earlier_flat_fields():
    """The trainers' configs live inside `IterateConfig` with iterate's defaults; the flat fields of
    earlier versions (older ``state.json`` configs) map onto them; `to_dict` leaves out what each
    iteration sets, and round-trips."""
    from compalign.iterate.config import IterateConfig

    c = IterateConfig()
    assert (c.reward_training.epochs, c.reward_training.batch_size) == (2, 32)
    assert (c.feedback_training.max_steps, c.feedback_training.batch_size) == (150, 8)
    assert c.noise_optimization.iterations == 20 and c.noise_optimization.progress is False
    old = IterateConfig.from_dict(
        {
            "reward_lr": 1e-3,
            "feedback_steps": 3,
            "feedback_stop_range": [0, 1],
            "pool_dir": "/p",
            "reno_lr": 2.0,
        }
    )
    assert old.reward_training.learning_rate == 1e-3 and old.reward_training.epochs == 2
    assert old.feedback_training.max_steps == 3 and old.feedback_training.stop_range == [0, 1]
    assert old.feedback_training.pool_dir == "/p" and old.noise_optimization.lr == 2.0
    d = old.to_dict()
    assert (
        "reward_lr" not in d and "base" not in d["feedback_training"] and "aspect" not in d["reward_training"]
    )
    assert IterateConfig.from_dict(json.loads(json.dumps(d))).to_dict() == d
    with pytest.raises(ValueError, match=r"feedback_training.base is set by each iteration"):
        IterateConfig(feedback_training={"base": "world-small"})
    with pytest.raises(ValueError, match=r"reward_training: unknown fields \['lr'\]"):
        IterateConfig(reward_training={"lr": 1.0})


def test_recorded_settings_keep_their_names_and_add_changed_fields():
    """A stage records its trainer's main fields under the names ``state.json`` has always used;
    any other field that changes the result is recorded once it differs from the default (so a
    changed setting is a conflict), and runtime fields (checkpoints, pool folder) never are."""
    from compalign.iterate.config import IterateConfig
    from compalign.iterate.run import IterateRun

    def settings(**kw):
        run = IterateRun(IterateConfig(workdir="unused", **kw))
        return {s: run.settings(1, s) for s in ("rewards", "feedback", "reno")}

    base = settings()
    assert {k: base["rewards"][k] for k in ("epochs", "lr", "head_lr")} == {
        "epochs": 2,
        "lr": 1e-5,
        "head_lr": None,
    }
    assert list(base["feedback"])[2:] == [
        "steps", "batch_size", "lr", "reg_type", "reg_weight", "pool_per_category", "seed",
    ]  # fmt: skip
    assert base["reno"]["iterations"] == 20 and base["reno"]["lr"] == 5.0
    changed = settings(
        reward_training={"margin": 0.5},
        feedback_training={"warmup_steps": 5, "checkpoint_every": 7, "pool_dir": "/elsewhere"},
        noise_optimization={"optimizer": "adam", "keep_all_images": True},
    )
    assert changed["rewards"] == {**base["rewards"], "margin": 0.5}
    assert changed["feedback"] == {**base["feedback"], "warmup_steps": 5}
    assert changed["reno"] == {**base["reno"], "optimizer": "adam"}
