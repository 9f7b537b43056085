"""Stop on validation: a tracked stage keeps its best epoch (fastai's SaveModelCallback) and
stops after ``patience`` epochs without improvement (EarlyStoppingCallback); the decision
survives a SIGKILL and --resume; the settings are in the stage keys; bad ones are one line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_lms, trec_rows, write_csv
from test_train import make_lm_learner, params

from ulmfit.cli import main
from ulmfit.config import ClassifierConfig, FinetuneLMConfig
from ulmfit.data.sources import SourceSpec
from ulmfit.errors import UserError
from ulmfit.tasks import run as run_mod
from ulmfit.train import LMTask, read_jsonl
from ulmfit.train.tasks import f1_counts, macro_f1
from ulmfit.train.tracker import Track, TrackState, decision, monitor_mode, track_of

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    """Same thread count as the subprocess of the kill test, so sums reduce identically."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- helpers (also imported by the subprocess of the kill test) ------------------------------


class ScriptedTask(LMTask):
    """LMTask whose validation also reports ``score``: ``values[e]`` after learner epoch
    ``e`` (read from the training loader), a monitor the test controls exactly, also across a
    resume. Snapshots the weights at every validation (``seen[e]``); optionally drops a marker
    and hangs at training step ``kill_at`` (to be SIGKILLed)."""

    def __init__(self, values, marker: str | None = None, kill_at: int | None = None) -> None:
        super().__init__()
        self.values, self.marker, self.kill_at = list(values), marker, kill_at
        self.learner, self.seen, self.calls = None, {}, 0

    def train_step(self, model, batch):
        self.calls += 1
        if self.calls == self.kill_at:
            Path(self.marker).write_text("mid-epoch")
            time.sleep(120)
        return super().train_step(model, batch)

    def summarize(self, sums):
        e = self.learner.train_loader.epoch
        self.seen[e] = params(self.learner.model)
        return {**super().summarize(sums), "score": self.values[e]}


class EpochLoader:
    """A loader that remembers the epoch it was last set to."""

    def __init__(self, inner) -> None:
        self.inner, self.epoch = inner, -1

    def __iter__(self):
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)


def scripted_learner(out_dir, values, **kill):
    task = ScriptedTask(values, **kill)
    learner = make_lm_learner(out_dir, task=task)
    learner.train_loader = EpochLoader(learner.train_loader)
    task.learner = learner
    return learner


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the decision, alone ---------------------------------------------------------------------


def test_monitor_modes_follow_fastai():
    assert [monitor_mode(m) for m in ("valid_loss", "error_rate", "perplexity")] == ["min"] * 3
    assert [monitor_mode(m) for m in ("accuracy", "macro_f1", "score")] == ["max"] * 3


def test_state_keeps_the_best_and_counts_the_epochs_since():
    track, state = Track(monitor="valid_loss", patience=2), TrackState()
    got = [state.update(track, v, e) for e, v in enumerate([4.0, 3.5, 3.6, float("nan")])]
    assert got == [True, True, False, False]  # a NaN is never an improvement
    assert (state.best, state.best_epoch, state.wait, state.stopped) == (3.5, 1, 2, True)
    assert TrackState.from_dict(state.to_dict()) == state
    reason = decision(track, state, stage=0, epochs_run=4, max_epochs=10)["reason"]
    assert reason == (
        "epoch 2 of 4 run (at most 10): best valid_loss 3.5000; "
        "stopped after 2 epochs without improvement"
    )
    maxed = TrackState()
    for e, v in enumerate([0.5, 0.7, 0.6]):
        maxed.update(Track(monitor="accuracy"), v, e)
    assert (maxed.best, maxed.best_epoch, maxed.stopped) == (0.7, 1, False)


def test_defaults_are_untracked_and_bad_settings_are_refused():
    assert track_of("last", None) is None  # keep-last, every epoch: nothing tracked
    assert track_of("last", 3) == Track(keep_best=False, patience=3)
    with pytest.raises(UserError, match="patience must be 1 or more"):
        track_of("best", 0)
    with pytest.raises(UserError, match="keep must be one of last, best"):
        track_of("worst", None)


def test_macro_f1_from_summed_counts_matches_sklearn():
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 4, generator=g), torch.randint(0, 3, (50,), generator=g)
    sums: dict = {}
    for part in (slice(0, 20), slice(20, 50)):  # two batches, summed
        for k, v in f1_counts(logits[part], y[part], "single").items():
            sums[k] = sums.get(k, 0.0) + v
    present = sorted(set(y.tolist()))  # class 3 is never a label: left out, as evaluate does
    want = f1_score(y, logits.argmax(-1), labels=present, average="macro", zero_division=0)
    assert macro_f1(sums, "single") == pytest.approx(want)
    multi = (torch.rand(50, 3, generator=g) > 0.6).to(torch.uint8)
    counts = f1_counts(logits[:, :3], multi, "multi")
    want = f1_score(multi, (logits[:, :3] > 0).int(), average="macro", zero_division=0)
    assert macro_f1(counts, "multi") == pytest.approx(want)


# -- the Learner ---------------------------------------------------------------------------


def test_best_epoch_is_kept_when_a_later_one_is_worse(tmp_path):
    learner = scripted_learner(tmp_path, [1.0, 3.0, 2.0, 2.5])
    learner.fit_one_cycle(4, 3e-2, track=Track(monitor="score"))
    assert len(learner.history) == 4  # no patience: every epoch ran
    assert same(params(learner.model), learner.task.seen[1])  # epoch 2's weights
    assert not same(params(learner.model), learner.task.seen[3])
    kept = learner.kept
    assert (kept["epoch"], kept["monitor"], kept["value"], kept["stopped_early"]) == (
        2,
        "score",
        3.0,
        False,
    )
    assert kept["reason"] == "epoch 2 of 4: best score 3.0000"
    # keep-last without patience is the untracked run, bit for bit
    plain = make_lm_learner(tmp_path / "plain").fit_one_cycle(4, 3e-2)
    assert same(params(plain.model), learner.task.seen[3])
    assert plain.kept["reason"] == "epoch 4 of 4: the last (keep last)"
    ckpt = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    assert "track" not in ckpt and "track" not in ckpt["plan"]  # as before tracking existed


def test_patience_stops_early_and_the_next_stage_starts_from_the_best(tmp_path):
    learner = scripted_learner(tmp_path, [1.0, 3.0, 2.0, 2.0, 9.0, 9.0, 9.0, 9.0])
    learner.fit_one_cycle(6, 3e-2, track=Track(monitor="score", patience=2))
    assert [h["epoch"] for h in learner.history] == [0, 1, 2, 3]  # stopped after epoch 4
    assert learner.epoch == 4 and same(params(learner.model), learner.task.seen[1])
    assert learner.kept["reason"] == (
        "epoch 2 of 4 run (at most 6): best score 3.0000; stopped after 2 epochs without "
        "improvement"
    )
    assert learner.kept["stopped_early"] and learner.kept["max_epochs"] == 6
    with pytest.raises(UserError, match="cannot resume"):  # another patience: another plan
        scripted_learner(tmp_path, [1.0] * 8).fit_one_cycle(
            6, 3e-2, track=Track(monitor="score", patience=3), resume=True
        )
    learner.fit_one_cycle(1, 1e-3)  # an untracked stage after it: learner epoch 4
    assert learner.history[-1]["learner_epoch"] == 4
    # a resume of the stopped stage trains nothing more and ends on the same weights
    again = scripted_learner(tmp_path, [1.0, 3.0, 2.0, 2.0, 9.0, 9.0, 9.0, 9.0])
    again.fit_one_cycle(6, 3e-2, track=Track(monitor="score", patience=2), resume=True)
    again.fit_one_cycle(1, 1e-3, resume=True)
    assert same(params(again.model), params(learner.model))


def test_a_finished_tracked_stage_resumed_ends_on_its_best_epoch(tmp_path):
    values = [1.0, 3.0, 2.0]
    done = scripted_learner(tmp_path, values).fit_one_cycle(3, 3e-2, track=Track("score"))
    # killed after the last checkpoint, before the model was published: --resume
    again = scripted_learner(tmp_path, values)
    again.fit_one_cycle(3, 3e-2, track=Track("score"), resume=True)
    assert same(params(again.model), params(done.model))
    assert again.kept == done.kept and again.kept["epoch"] == 2


def test_unknown_monitor_and_missing_validation_are_user_errors(tmp_path):
    learner = make_lm_learner(tmp_path)
    with pytest.raises(UserError, match="cannot track 'macro_f1'.*valid_loss"):
        learner.fit_one_cycle(1, 1e-2, track=Track(monitor="macro_f1"))
    learner.valid_loader = None
    with pytest.raises(UserError, match="needs a validation set"):
        learner.fit_one_cycle(1, 1e-2, track=Track())


def test_resume_after_sigkill_keeps_the_same_best_epoch(tmp_path):
    """Killed in epoch 3, after epoch 2 (the best) was checkpointed: the resumed run must end
    on epoch 2's weights, as the uninterrupted one does, although epoch 3 is its last."""
    run, ref, marker = tmp_path / "run", tmp_path / "ref", tmp_path / "marker"
    values = [1.0, 3.0, 2.0, 2.5]
    n = len(make_lm_learner(tmp_path / "probe").train_loader)
    at = 2 * n + n // 2  # the middle of the third epoch
    child = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(TESTS)!r})
        from test_keep_best import scripted_learner
        from ulmfit.train.tracker import Track
        torch.set_num_threads(1)
        learner = scripted_learner({str(run)!r}, {values!r}, marker={str(marker)!r}, kill_at={at})
        learner.fit_one_cycle(4, 3e-2, track=Track("score", patience=3))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"child exited early: {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["stage_epoch"] == 2 and ckpt["track"]["best_epoch"] == 1
    assert "best_model" in ckpt  # the best weights travel in the checkpoint

    track = Track("score", patience=3)
    resumed = scripted_learner(run, values)
    resumed.fit_one_cycle(4, 3e-2, track=track, resume=True)
    uninterrupted = scripted_learner(ref, values)
    uninterrupted.fit_one_cycle(4, 3e-2, track=track)
    a, b = params(resumed.model), params(uninterrupted.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    torch.testing.assert_close(a, uninterrupted.task.seen[1], rtol=0, atol=1e-6)
    assert resumed.kept == uninterrupted.kept and resumed.kept["epoch"] == 2
    assert [h["epoch"] for h in read_jsonl(run / "metrics.jsonl")] == [0, 1, 2, 3]


# -- the tasks: settings, stage keys, the report, the command line -------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keep")
    rows = trec_rows(80)
    tiny_lms(d, [r["text"] for r in rows])
    multi = [{"text": r["text"], "label": f"{r['label']}|x"} for r in rows]
    return {
        "dir": d,
        "train": write_csv(d / "train.csv", rows),
        "multi": write_csv(d / "multi.csv", multi),
        "fwd": str(d / "pre_fwd"),
    }


def _keys(files, cfg: ClassifierConfig, lm_cfg: FinetuneLMConfig) -> dict[str, str]:
    spec = SourceSpec(path=files["train"], label_cols=["label"])
    texts = [replace(spec, label_cols=None)]
    sources = {"fwd": (files["fwd"], None)}
    stages = run_mod._plan(texts, spec, None, None, ["fwd"], sources, lm_cfg, cfg)
    return {s.name: s.key for s in stages}


def test_stage_keys_hold_the_new_settings_and_the_defaults_leave_them_as_before(files):
    cfg, lm_cfg = ClassifierConfig(), FinetuneLMConfig()
    for settings in (run_mod._settings(cfg), run_mod._settings(lm_cfg)):
        assert not {"keep", "patience", "monitor"} & set(settings)  # keys of earlier runs
    base = _keys(files, cfg, lm_cfg)
    clf = _keys(files, replace(cfg, keep="best"), lm_cfg)
    assert clf["lm"] == base["lm"] and clf["classifier"] != base["classifier"]
    patient = _keys(files, replace(cfg, patience=2), lm_cfg)
    assert patient["classifier"] not in (base["classifier"], clf["classifier"])
    watched = _keys(files, replace(cfg, keep="best", monitor="accuracy"), lm_cfg)
    assert watched["classifier"] != clf["classifier"]
    lm = _keys(files, cfg, replace(lm_cfg, keep="best", patience=1))
    assert lm["lm"] != base["lm"] and lm["classifier"] != base["classifier"]


def _one_line(code: int, err: str, *needles: str) -> None:
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ulmfit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--patience", "0"], ["--patience", "must be 1 or more, got 0"]),
        (["--lm-patience", "0"], ["--lm-patience", "must be 1 or more"]),
        (["--monitor", "auc"], ["--monitor", "invalid choice: 'auc'"]),
        (["--keep", "worst"], ["--keep", "invalid choice"]),
        (["--lm-keep", "first"], ["--lm-keep", "invalid choice"]),
    ],
)
def test_bad_settings_are_one_line_errors(capsys, files, tmp_path, extra, needles):
    argv = ["fit", "--train", files["train"], "--pretrained", files["fwd"], "--out", tmp_path]
    code = main([str(a) for a in [*argv, *extra]])
    _one_line(code, capsys.readouterr().err, *needles)
    assert not any(tmp_path.iterdir())


def test_a_monitor_the_target_lacks_is_refused_before_any_work(capsys, files, tmp_path):
    out = tmp_path / "run"
    argv = ["fit", "--train", files["multi"], "--label-delim", "|", "--pretrained", files["fwd"]]
    argv += ["--out", out, "--keep", "best", "--monitor", "accuracy", "--device", "cpu"]
    code = main([str(a) for a in argv])
    _one_line(code, capsys.readouterr().err, "--monitor accuracy", "multi", "macro_f1")
    assert not out.exists()
    with pytest.raises(UserError, match="monitor must be one of"):
        run_mod.fit(SourceSpec(path=files["train"]), files["fwd"], out,
                    cfg=ClassifierConfig(monitor="auc"))  # fmt: skip


def test_pretrain_without_held_out_text_cannot_keep_best(capsys, files, tmp_path):
    out = tmp_path / "lm"
    argv = ["pretrain", files["train"], "--out", out, "--valid-pct", "0", "--keep", "best"]
    code = main([str(a) for a in [*argv, "--dry-run", "--device", "cpu", "--workers", "1"]])
    _one_line(code, capsys.readouterr().err, "held-out loss", "--valid-pct above 0")
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_fit_reports_the_kept_epochs(capsys, files, tmp_path, monkeypatch):
    """One dry run end to end: the LM's report.json, the classifier's metrics.json and the
    --json summary say which epoch was kept, by which monitor, and why."""
    monkeypatch.setenv("ULMFIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = ["fit", "--train", files["train"], "--pretrained", files["fwd"], "--out", out]
    argv += ["--dry-run", "--json", "--device", "cpu", "--workers", "1", "--bs", "16"]
    argv += ["--keep", "best", "--monitor", "macro_f1", "--patience", "1"]
    argv += ["--lm-keep", "best", "--lm-patience", "2"]
    code = main([str(a) for a in argv])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(stdout)
    where = Path(res["out"])
    lm_kept = json.loads((where / "lm" / "report.json").read_text())["kept"]
    clf_kept = json.loads((where / "report" / "metrics.json").read_text())["kept"]
    assert res["lm"]["kept"] == lm_kept and res["classifier"]["kept"] == clf_kept
    assert (lm_kept["monitor"], lm_kept["keep"], lm_kept["patience"]) == ("valid_loss", "best", 2)
    assert (clf_kept["monitor"], clf_kept["keep"], clf_kept["epoch"]) == ("macro_f1", "best", 1)
    assert clf_kept["reason"].startswith("epoch 1 of 1: best macro_f1 ")
    assert clf_kept["stage"] == 3  # the last of the four stages of gradual unfreezing
    history = json.loads((where / "report" / "metrics.json").read_text())["history"]
    assert math.isfinite(history[-1]["macro_f1"])
    assert not list((where / "report" / "train").glob("*.pt"))  # no checkpoint published
    assert np.isfinite(res["classifier"]["valid"]["accuracy"])


def test_the_printed_summary_names_the_kept_epoch_only_when_tracked():
    from ulmfit.cli.lm import kept_note

    untracked = {"kept": decision(None, TrackState(), 0, 4, 4)}
    assert kept_note(untracked) == "" and kept_note({}) == ""  # output as before
    state = TrackState(best=0.5, best_epoch=0, wait=1)
    tracked = {"kept": decision(Track(), state, 3, 2, 2)}
    assert kept_note(tracked) == "  (kept epoch 1 of 2: best valid_loss 0.5000)"


def test_a_changed_keep_is_named_with_both_values(files, tmp_path):
    """A record made at the default leaves ``keep`` out: the message still says "last"."""
    from ulmfit.tasks.lm_partial import check_same, run_settings

    old = run_settings("finetune_lm", run_mod._settings(FinetuneLMConfig()))
    new = run_settings("finetune_lm", run_mod._settings(FinetuneLMConfig(keep="best")))
    with pytest.raises(UserError, match='--keep was "last" there, now "best"'):
        check_same(tmp_path, old, new, ("config",))
    with pytest.raises(UserError, match='--keep was "best" there, now "last"'):
        check_same(tmp_path, new, old, ("config",))
    parts = {"settings": run_mod._settings(ClassifierConfig())}
    changed = {"settings": run_mod._settings(ClassifierConfig(patience=2))}
    assert "(patience: null there, now 2)" in run_mod._what_changed(parts, changed)
    assert "(patience: 2 there, now null)" in run_mod._what_changed(changed, parts)
