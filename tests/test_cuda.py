"""The CUDA path gives the CPU's numbers: forward, EM step (also the bfloat16 E-step),
next-token distribution, sampling, MLE init and the exact queries on the GPU (skipped where
torch sees no CUDA device)."""

from __future__ import annotations

import pytest
import torch

from hmmlvd.hmm import HMMConfig, expected_counts, maximize, mle_from_labels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("homogeneous", [False, True])
def test_cuda_matches_cpu(make_hmm, windows_factory, homogeneous):
    cpu = make_hmm(8, 20, 6, homogeneous=homogeneous, seed=3)
    gpu = make_hmm(8, 20, 6, homogeneous=homogeneous, seed=3).to("cuda")
    x = windows_factory(16, 6, 20, seed=4)
    torch.testing.assert_close(gpu.log_likelihood(x).cpu(), cpu.log_likelihood(x))
    torch.testing.assert_close(gpu.next_token_distribution(x[:, :3]).cpu(),
                               cpu.next_token_distribution(x[:, :3]))
    for model in (cpu, gpu):
        maximize(model, expected_counts(model, x), step_size=0.5, pseudocount=0.01)
    for name, p in cpu.parameters().items():
        torch.testing.assert_close(gpu.parameters()[name].cpu(), p, rtol=1e-4, atol=1e-6)
    gen = torch.Generator(device="cuda").manual_seed(0)
    samples = gpu.sample(5, prefix=x[0, :2], generator=gen)
    assert samples.is_cuda and (samples[:, :2].cpu() == x[0, :2]).all()


def test_mle_from_labels_on_cuda(windows_factory):
    config = HMMConfig(4, 10, 5)
    x = windows_factory(30, 5, 10, seed=5)
    z = windows_factory(30, 5, 4, seed=6)
    cpu = mle_from_labels(x, z, config, pseudocount=0.1)
    gpu = mle_from_labels(x, z, config, pseudocount=0.1, device="cuda")
    for name, p in cpu.parameters().items():
        torch.testing.assert_close(gpu.parameters()[name].cpu(), p)


def test_queries_on_cuda_match_cpu(make_hmm, windows_factory):
    """Posteriors, Viterbi, masked likelihood, infill, constraint probability and the
    constrained next token give the CPU's numbers on the GPU; the samplers run there and the
    constrained one satisfies its constraint."""
    from hmmlvd.hmm.dfa import keywords

    cpu = make_hmm(5, 9, 6, seed=7)
    gpu = make_hmm(5, 9, 6, seed=7).to("cuda")
    x = windows_factory(12, 6, 9, seed=8)
    mask = torch.rand(12, 6, generator=torch.Generator().manual_seed(9)) > 0.3
    mask[:, 0] = True
    close = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(gpu.predict_proba(x, mask).cpu(), cpu.predict_proba(x, mask),
                               **close)
    torch.testing.assert_close(gpu.log_likelihood(x, mask).cpu(), cpu.log_likelihood(x, mask),
                               **close)
    torch.testing.assert_close(gpu.decode(x)[1].cpu(), cpu.decode(x)[1], **close)
    torch.testing.assert_close(gpu.infill_distribution(x, mask).cpu(),
                               cpu.infill_distribution(x, mask), **close)
    dfa = keywords([1, 4])
    torch.testing.assert_close(gpu.constraint_probability(dfa, x[:, :2]).cpu(),
                               cpu.constraint_probability(dfa, x[:, :2]), **close)
    torch.testing.assert_close(gpu.constrained_next_token(x[:, :3], dfa).cpu(),
                               cpu.constrained_next_token(x[:, :3], dfa), **close)
    drawn = gpu.sample(20, constraint=dfa, seed=0)
    assert drawn.is_cuda and all(dfa.accepts(row) for row in drawn.tolist())
    assert gpu.infill(x, mask, 3, seed=0).is_cuda


def test_bf16_e_step_on_cuda_tracks_float32(make_hmm, windows_factory):
    """The bfloat16 E-step on the GPU gives the float32 counts within bf16's rounding."""
    hmm = make_hmm(8, 20, 6, seed=10).to("cuda")
    x = windows_factory(40, 6, 20, seed=11)
    fp32 = expected_counts(hmm, x)
    bf16 = expected_counts(hmm, x, dtype=torch.bfloat16)
    torch.testing.assert_close(bf16.transition, fp32.transition, rtol=0.03, atol=1e-2)
    assert bf16.log_likelihood == pytest.approx(fp32.log_likelihood, rel=2e-3)


def test_load_checkpoint_onto_cuda(tmp_path):
    """A checkpoint resumed with device="cuda" gives the saved model on the GPU."""
    from conftest import save_hmm_checkpoint

    from hmmlvd.em import Progress
    from hmmlvd.em.config import EMConfig
    from hmmlvd.hmm import HMM, load_checkpoint

    hmm = HMM(3, 5, 4, seed=2)
    save_hmm_checkpoint(hmm, EMConfig(batch_size=2), Progress(step=1), tmp_path)
    loaded = load_checkpoint(tmp_path, device="cuda")[0]
    for name, p in hmm.parameters().items():
        assert loaded.parameters()[name].is_cuda
        assert torch.equal(loaded.parameters()[name].cpu(), p)
