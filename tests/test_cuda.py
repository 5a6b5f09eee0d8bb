"""The CUDA path gives the CPU's numbers: forward, EM step, next-token distribution, sampling
and MLE init on the GPU (skipped where torch sees no CUDA device)."""

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
