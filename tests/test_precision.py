"""The E-step's compute dtype and chunks (hmmlvd.hmm.em.expected_counts, HMM training with
``TrainConfig.dtype``): bfloat16 against the float64 brute-force oracle within bf16's rounding,
chunked counts equal to one pass, and the full-batch M-step that runs in place."""

from __future__ import annotations

import copy

import pytest
import torch

from hmmlvd.core.device import resolve_dtype
from hmmlvd.core.errors import HMMLVDError
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM, CountAccumulator, expected_counts, maximize
from hmmlvd.hmm.em import ScaledEmission, chunk_windows

# bf16 keeps 8 significant bits: each rounding is within 2^-9 relative. A count is a sum of
# products of O(T) rounded factors, so 2-3% relative is the bound that bf16 should meet and
# float32-level agreement (1e-5) is what it cannot.
BF16_RTOL = 0.03


def dense(hmm: HMM, counts) -> torch.Tensor:
    table = torch.zeros(hmm.emission.numel() // hmm.num_states, hmm.num_states,
                        dtype=torch.float64)
    table.index_add_(0, counts.emission_rows, counts.emission_values.double())
    return table.view(hmm.emission.shape)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_bf16_counts_match_brute_force_within_rounding(make_hmm, windows_factory, brute_counts,
                                                       homogeneous):
    hmm = make_hmm(4, 6, 5, homogeneous, seed=3)
    x = windows_factory(20, 5, 6, seed=4)
    want = brute_counts(hmm, x)
    got = expected_counts(hmm, x, dtype=torch.bfloat16)
    assert got.emission_values.dtype == torch.float32 and got.transition.dtype == torch.float32
    torch.testing.assert_close(got.initial.double(), torch.from_numpy(want["initial"]),
                               rtol=BF16_RTOL, atol=1e-2)
    torch.testing.assert_close(got.transition.double(), torch.from_numpy(want["transition"]),
                               rtol=BF16_RTOL, atol=1e-2)
    torch.testing.assert_close(dense(hmm, got), torch.from_numpy(want["emission"]),
                               rtol=BF16_RTOL, atol=1e-2)
    # log p(x) per window within bf16's rounding of ~T normalisers (not a scaling bias)
    assert got.log_likelihood == pytest.approx(want["log_likelihood"], rel=2e-3)
    # the counts really were computed in bf16: they differ from float32's beyond its noise
    fp32 = expected_counts(hmm, x)
    assert not torch.allclose(fp32.emission_values, got.emission_values, rtol=1e-5, atol=1e-7)


def test_bf16_em_from_the_same_init_tracks_float32(make_hmm, windows_factory):
    """Mini-batch EM for 3 epochs from one init in float32 and bfloat16: the per-epoch train
    log-likelihoods agree within 0.5% and both rise."""
    x = windows_factory(240, 6, 12, seed=8)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        hmm = make_hmm(6, 12, 6, seed=9)
        config = EMConfig(epochs=3, step_size=0.5, final_full_batch=0, batch_size=40,
                          pseudocount=1e-3, dtype=dtype)
        hmm.fit(x, config, progress=False)
        runs[dtype] = (hmm, hmm.fit_history)
    fp32, bf16 = runs["float32"][1], runs["bfloat16"][1]
    assert fp32[-1] > fp32[0] and bf16[-1] > bf16[0]
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=5e-3)
    # the trained models score held-out windows alike (scored in float32 either way)
    held = windows_factory(60, 6, 12, seed=10)
    assert runs["bfloat16"][0].score(held) == pytest.approx(runs["float32"][0].score(held),
                                                            rel=5e-3)


@pytest.mark.parametrize("homogeneous", [False, True])
def test_chunked_counts_equal_one_pass(make_hmm, windows_factory, homogeneous):
    hmm = make_hmm(3, 7, 4, homogeneous, seed=11)
    x = windows_factory(23, 4, 7, seed=12)  # 23 = 5 chunks of 5 with a short last one
    whole = expected_counts(hmm, x, chunk_size=len(x))
    chunked = expected_counts(hmm, x, chunk_size=5)
    for name in ("initial", "transition", "state_totals"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))
    assert torch.equal(chunked.emission_rows, whole.emission_rows)
    torch.testing.assert_close(chunked.emission_values, whole.emission_values)
    assert chunked.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-6)
    assert chunked.num_windows == 23
    stepped = [copy.deepcopy(hmm) for _ in range(2)]  # the M-step takes either alike
    for model, counts in zip(stepped, (whole, chunked), strict=True):
        maximize(model, counts, 0.5, 1e-2)
    for name, p in stepped[0].parameters().items():
        torch.testing.assert_close(stepped[1].parameters()[name], p)


def test_chunks_read_the_scaled_table_in_the_asked_dtype(make_hmm, windows_factory):
    """Chunked counts read the true emissions of a scaled table (not the stored ones) and
    compute in the asked dtype, like one pass: bfloat16 chunks match bfloat16 in one pass
    far closer than float32 counts do."""
    hmm = make_hmm(3, 7, 4, seed=11)
    scaled = ScaledEmission(hmm)
    maximize(hmm, expected_counts(hmm, windows_factory(6, 4, 7, seed=1), scaled), 0.5, 1e-2,
             scaled)
    assert not scaled.exact  # the premise: hmm.emission is not the true table
    x = windows_factory(23, 4, 7, seed=12)
    f32 = expected_counts(hmm, x, scaled, chunk_size=len(x))
    for dtype in (torch.float32, torch.bfloat16):
        whole = expected_counts(hmm, x, scaled, dtype, chunk_size=len(x))
        chunked = expected_counts(hmm, x, scaled, dtype, chunk_size=5)
        gap = (chunked.emission_values - whole.emission_values).abs().max()
        assert gap <= 1e-5
        if dtype == torch.bfloat16:
            assert (f32.emission_values - whole.emission_values).abs().max() > 100 * 1e-5
        else:  # bfloat16 transition counts sum over a chunk's windows: chunking rounds them
            torch.testing.assert_close(chunked.transition, whole.transition)
        assert chunked.log_likelihood == pytest.approx(whole.log_likelihood, rel=1e-6)


def test_chunk_size_bounds_the_entries_of_a_chunk():
    assert chunk_windows(128, 32) == 16384
    assert chunk_windows(1024, 32) == 2048
    assert chunk_windows(10**9, 32) == 1


def test_dense_full_batch_m_step_equals_the_scattered_rows(make_hmm, windows_factory):
    """The in-place M-step of a whole count table gives what scattering its rows gives."""
    x = windows_factory(30, 4, 6, seed=13)
    a, b = make_hmm(3, 6, 4, seed=14), make_hmm(3, 6, 4, seed=14)
    acc = CountAccumulator(a)
    acc.add(expected_counts(a, x))
    total = acc.total()
    assert total.dense
    maximize(a, total, step_size=0.7, pseudocount=0.05)
    sparse = copy.copy(total)
    sparse.dense = False
    sparse.emission_values = total.emission_values.clone()
    maximize(b, sparse, step_size=0.7, pseudocount=0.05)
    for name, p in a.parameters().items():
        torch.testing.assert_close(p, b.parameters()[name], msg=name)


def test_dense_m_step_writes_out_a_scaled_table_first(make_hmm, windows_factory):
    """A full-batch M-step after scaled mini-batch steps starts from the true table."""
    x = windows_factory(20, 4, 6, seed=15)
    a, b = make_hmm(3, 6, 4, seed=16), make_hmm(3, 6, 4, seed=16)
    scaled = ScaledEmission(a)
    maximize(a, expected_counts(a, x[:10], scaled), 0.4, 1e-3, scaled)
    maximize(b, expected_counts(b, x[:10]), 0.4, 1e-3)
    assert not scaled.exact
    acc_a, acc_b = CountAccumulator(a), CountAccumulator(b)
    acc_a.add(expected_counts(a, x, scaled))
    acc_b.add(expected_counts(b, x))
    maximize(a, acc_a.total(), 1.0, 1e-3, scaled)
    maximize(b, acc_b.total(), 1.0, 1e-3)
    scaled.materialise()
    torch.testing.assert_close(a.emission, b.emission)


def test_train_config_refuses_an_unknown_dtype():
    with pytest.raises(HMMLVDError, match="dtype must be one of"):
        EMConfig(dtype="float16")
    with pytest.raises(HMMLVDError, match="dtype must be one of"):
        resolve_dtype("half", "cpu")


def test_training_records_the_dtype_it_ran_in(make_hmm, windows_factory, monkeypatch):
    """``auto`` follows the device's native bf16 (patched here), and the history says which."""
    import hmmlvd.core.device as device_module

    x = windows_factory(40, 4, 6, seed=17)
    for flags, want in (({"avx512_bf16"}, "bfloat16"), (set(), "float32")):
        monkeypatch.setattr(device_module, "cpu_flags", lambda f=flags: frozenset(f))
        hmm = make_hmm(3, 6, 4, seed=18)
        from hmmlvd.data.windows import TokenWindows
        from hmmlvd.hmm.train import train

        config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=20)
        state = train(hmm, TokenWindows.from_rows(x), config, progress=False)
        assert [row["dtype"] for row in state.history] == [want]


def test_bf16_perplexity_is_close_to_float32_and_really_bf16(make_hmm, windows_factory):
    from hmmlvd.hmm.eval import sliding_token_log_probs

    hmm = make_hmm(8, 20, 6, seed=19, sharpness=1.0)
    stream = windows_factory(1, 300, 20, seed=20)[0].numpy()
    fp32 = sliding_token_log_probs(hmm, stream, 64)
    bf16 = sliding_token_log_probs(hmm, stream, 64, dtype=torch.bfloat16)
    assert fp32.dtype == bf16.dtype == torch.float64
    assert not torch.equal(fp32, bf16)  # the dtype reached the forward
    assert bf16.mean().item() == pytest.approx(fp32.mean().item(), rel=5e-3)


def test_eval_cli_takes_a_dtype(tmp_path, capsys):
    from word_corpus import write_word_corpus

    from hmmlvd.cli import main
    from hmmlvd.data import load_wikitext
    from hmmlvd.hmm.eval import sliding_perplexity

    corpus = write_word_corpus(tmp_path / "wt")
    data = load_wikitext(corpus)
    hmm = HMM(3, len(data.vocab), 6, seed=1, vocab=data.vocab)
    hmm.save_pretrained(tmp_path / "m")
    assert main(["eval", "--model", str(tmp_path / "m"), "--data-dir", str(corpus),
                 "--splits", "test", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    want = sliding_perplexity(hmm, data.test, dtype=torch.bfloat16).perplexity
    assert "forward matmuls in bfloat16" in out and f"{want:.2f}" in out
