"""Early stopping of HMM EM on held-out windows (``HMM.fit(..., valid=...)``,
``TrainConfig.patience``), checked against an independent oracle: fresh copies trained for
1..N epochs (the first k epochs of an N-epoch run are a k-epoch run: shuffles depend on the
epoch index only), scored on the held-out windows."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from conftest import peaked_hmm

from hmmlvd.core.errors import HMMLVDError
from hmmlvd.em.config import EMConfig

V, T, H = 9, 5, 4


def data(seed: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # train and held-out windows from different word distributions: EM with a large step
    # overfits the training windows, so the held-out score peaks before the last epoch
    probs = torch.softmax(torch.randn(V, generator=gen) * 2, 0)
    return torch.multinomial(probs, n * T, replacement=True, generator=gen).view(n, T)


TRAIN, VALID = data(1, 60), data(2, 40)


def config(epochs: int, patience: int = 0, full_batch: int = 0) -> EMConfig:
    return EMConfig(epochs=epochs, step_size=0.9, final_full_batch=full_batch, batch_size=10,
                    pseudocount=1e-3, patience=patience)


def start():
    return peaked_hmm(H, V, T, seed=3, sharpness=1.0)


def oracle(epochs: int):
    """(held-out score, model) after each of 1..epochs epochs, each from a fresh start."""
    out = []
    for k in range(1, epochs + 1):
        model = start().fit(TRAIN, config(k), progress=False)
        out.append((model.score(VALID), model))
    return out


def stop_epoch(scores: list[float], patience: int) -> tuple[int, int]:
    """(epochs run, best epoch) of early stopping over ``scores`` (1-based)."""
    best = 0
    for e, value in enumerate(scores, 1):
        if not best or value > scores[best - 1]:
            best = e
        if patience and e - best >= patience:
            return e, best
    return len(scores), best


def same(a, b, **tol) -> None:
    for name, p in a.parameters().items():
        torch.testing.assert_close(p, b.parameters()[name], msg=name, **tol)


EPOCHS = 8
ORACLE = None


def get_oracle():
    global ORACLE
    if ORACLE is None:
        ORACLE = oracle(EPOCHS)
    return ORACLE


def test_the_case_overfits():
    scores = [s for s, _ in get_oracle()]
    best = max(range(EPOCHS), key=scores.__getitem__)
    assert best < EPOCHS - 2, scores  # so that keeping the best and stopping early matter


@pytest.mark.parametrize("patience", [0, 1, 2])
def test_the_best_epoch_is_kept_and_patience_stops(patience):
    scores = [s for s, _ in get_oracle()]
    run, best = stop_epoch(scores, patience)
    model = start().fit(TRAIN, config(EPOCHS, patience), valid=VALID, progress=False)
    assert len(model.fit_history) == run
    assert model.valid_history == pytest.approx(scores[:run], rel=1e-5)
    same(model, get_oracle()[best - 1][1])


def test_full_batch_epochs_go_on_from_the_best_epoch():
    scores = [s for s, _ in get_oracle()]
    run, best = stop_epoch(scores, 1)
    model = start().fit(TRAIN, config(EPOCHS, 1, full_batch=1), valid=VALID, progress=False)
    assert len(model.fit_history) == run + 1  # the full-batch epoch still ran
    want = copy.deepcopy(get_oracle()[best - 1][1])
    want.fit(TRAIN, EMConfig(epochs=0, final_full_batch=1, batch_size=10,
                                pseudocount=1e-3), progress=False)
    if want.score(VALID) > scores[best - 1]:  # the full-batch epoch improved held-out
        same(model, want, rtol=1e-4, atol=1e-6)
    else:
        same(model, get_oracle()[best - 1][1])


def test_patience_needs_held_out_windows():
    with pytest.raises(HMMLVDError, match="patience needs held-out"):
        start().fit(TRAIN, config(2, 1), progress=False)


def test_patience_counts_afresh_in_the_full_batch_epochs():
    """Patience 2 with two full-batch epochs: both run, whatever the first one scores (the
    wait counts from the start of the full-batch epochs, not from the best mini-batch one)."""
    scores = [s for s, _ in get_oracle()]
    run, _ = stop_epoch(scores, 2)
    model = start().fit(TRAIN, config(EPOCHS, 2, full_batch=2), valid=VALID, progress=False)
    assert len(model.fit_history) == run + 2


def test_cli_patience_keeps_the_best_epoch_and_resumes_it(tmp_path, capsys):
    """``hmmlvd train --patience``: the saved model is the best epoch on the valid split (its
    window log-likelihood, recorded per epoch), also when the run was stopped and resumed."""
    import json

    from word_corpus import write_word_corpus

    from hmmlvd.cli import main
    from hmmlvd.data import TokenWindows, load_wikitext
    from hmmlvd.hmm import HMM

    corpus = write_word_corpus(tmp_path / "wt")
    argv = ["train", "--data-dir", str(corpus), "--hidden-states", "3", "--length", "5",
            "--epochs", "6", "--step-size", "0.9", "--batch-size", "16", "--patience", "2",
            "--pseudocount", "1e-3", "--final-full-batch", "0", "--device", "cpu",
            "--no-eval"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    history = json.loads((tmp_path / "a" / "results.json").read_text())["history"]
    scores = [row["valid_ll_per_window"] for row in history]
    model = HMM.from_pretrained(tmp_path / "a")
    valid = TokenWindows(load_wikitext(corpus).valid, 5)
    assert model.score(valid) == pytest.approx(max(scores), rel=1e-5)
    assert max(range(len(scores)), key=scores.__getitem__) < len(scores) - 1  # not the last


class Crash(Exception):
    pass


@pytest.mark.parametrize("crash_at", [4, 11, 17])
def test_a_resumed_run_keeps_the_same_best_epoch(tmp_path, monkeypatch, crash_at):
    """Killed mid-run (an E-step raises after ``crash_at`` batches, with checkpoints every 3
    steps), resumed from its last checkpoint: the same final parameters, valid scores and
    stop as an uninterrupted run (the best epoch's parameters come back from the
    checkpoint's best/ folder)."""
    from hmmlvd.data import TokenWindows
    train_module = importlib.import_module("hmmlvd.hmm.train")
    from hmmlvd.hmm.resume import load_checkpoint

    cfg = EMConfig(epochs=EPOCHS, step_size=0.9, final_full_batch=1, batch_size=10,
                      pseudocount=1e-3, patience=1, checkpoint_every=3)
    windows, valid = TokenWindows.from_rows(TRAIN), TokenWindows.from_rows(VALID)
    whole = start()
    want = train_module.train(whole, windows, cfg, valid=valid, progress=False)
    real, seen = train_module.expected_counts, {"n": 0}

    def counting(*args, **kwargs):
        if seen["n"] == crash_at:
            raise Crash
        seen["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "expected_counts", counting)
    with pytest.raises(Crash):
        train_module.train(start(), windows, cfg, out=tmp_path, valid=valid, progress=False)
    monkeypatch.setattr(train_module, "expected_counts", real)
    hmm, saved, checkpoints = load_checkpoint(tmp_path)
    assert saved == cfg
    got = train_module.train(hmm, windows, cfg, valid=valid, checkpoints=checkpoints,
                             progress=False)
    assert [r["epoch"] for r in got.history] == [r["epoch"] for r in want.history]
    assert [r["valid_ll_per_window"] for r in got.history] == pytest.approx(
        [r["valid_ll_per_window"] for r in want.history], rel=1e-5)
    same(hmm, whole, rtol=1e-5, atol=1e-7)


# ----- an old step folder with early stopping -------------------------------------------------

def test_an_old_step_folder_with_early_stopping_resumes_its_best_epoch(tmp_path):
    """The HMM layout before the one run-folder format, written by hand as its writer did: a
    run with patience 2 saved at the end of the epoch after its best one (the model, the best
    epoch's parameters in best/ of type "hmm-best-parameters", the held-out scores and the
    best epoch in ``early``). Resumed, it stops when the uninterrupted run does and ends with
    the best epoch's parameters (the oracle's)."""
    import json

    from hmmlvd.core import persist
    from hmmlvd.data import TokenWindows
    from hmmlvd.hmm.resume import load_checkpoint
    train_module = importlib.import_module("hmmlvd.hmm.train")

    scores = [s for s, _ in get_oracle()]
    run, best = stop_epoch(scores, 2)
    assert run == best + 2 < EPOCHS  # stopped by patience, two epochs after the best
    done = best + 1  # epochs the old run finished: one past its best, patience not yet out
    steps = done * 6  # 60 windows in batches of 10
    cfg = config(EPOCHS, 2)
    folder = tmp_path / "checkpoints" / f"step-{steps:08d}"
    get_oracle()[done - 1][1].save_pretrained(folder)
    best_model = get_oracle()[best - 1][1]
    persist.save(folder / "best", best_model.parameters(), best_model.config.to_dict(),
                 "hmm-best-parameters")
    (folder / "train_state.json").write_text(json.dumps({
        "em_config": cfg.to_dict(), "epoch": done, "batch": 0, "step": steps,
        "epoch_total": 0.0, "epoch_units": 0.0,
        "history": [{"epoch": e, "valid_ll_per_window": scores[e - 1]}
                    for e in range(1, done + 1)],
        "run_id": "ab" * 16, "trained_on": {},
        "early": {"scores": scores[:done], "best_epoch": best, "since": 0}}, indent=2))
    (tmp_path / "checkpoints" / "latest").write_text(folder.name + "\n")

    hmm, saved, checkpoints = load_checkpoint(tmp_path)
    assert saved == cfg
    got = train_module.train(hmm, TokenWindows.from_rows(TRAIN), saved,
                             valid=TokenWindows.from_rows(VALID), checkpoints=checkpoints,
                             progress=False)
    assert len(got.history) == run
    assert [r["valid_ll_per_window"] for r in got.history] == pytest.approx(scores[:run],
                                                                             rel=1e-5)
    same(hmm, best_model, rtol=1e-5, atol=1e-7)
