"""Memory estimates (hmmlvd.hmm.memory, on hmmlvd.core.memory): the parameter bytes, how the EM
estimate grows, checks that fail before anything is allocated, the escape hatch, the CLI's
one-line error, and one re-measurement of the estimate against the real peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from word_corpus import write_word_corpus

from hmmlvd.cli import main
from hmmlvd.core import memory as device_memory
from hmmlvd.core.errors import InsufficientMemoryError, ParameterError
from hmmlvd.data import TokenWindows
from hmmlvd.em.config import EMConfig
from hmmlvd.hmm import HMM, HMMConfig, memory, mle_from_labels, train
from hmmlvd.hmm import init as init_module

GB = 10**9


@pytest.fixture
def available(monkeypatch):
    """``available(n)`` makes every device report ``n`` bytes available."""

    def set_available(n: int | None) -> None:
        monkeypatch.setattr(device_memory, "available_bytes", lambda device: n)

    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    return set_available


@pytest.mark.parametrize("h, v, t, homogeneous", [(1, 1, 1, False), (3, 5, 4, False),
                                                  (3, 5, 4, True), (7, 2, 1, False),
                                                  (100_000, 33_278, 32, False)])
def test_parameter_bytes_closed_form(h, v, t, homogeneous):
    config = HMMConfig(h, v, t, homogeneous)
    pa, pb = (1, 1) if homogeneous else (t - 1, t)
    assert memory.parameter_bytes(config) == 4 * (h + pa * h * h + pb * v * h)
    if h * v < 100:  # the real tensors have exactly that many bytes
        hmm = HMM(h, v, t, homogeneous)
        assert memory.parameter_bytes(config) == sum(p.numel() * p.element_size()
                                                     for p in hmm.parameters().values())
    for method in ("random", "load"):
        assert memory.model_estimate(config, method).total == memory.parameter_bytes(config)


def test_training_estimate_grows_as_expected():
    config = HMMConfig(64, 1000, 32)
    one = memory.training_estimate(config, 100)
    two = memory.training_estimate(config, 200)
    assert one.parameters == two.parameters == memory.parameter_bytes(config)
    assert one.counts == two.counts  # count tables do not depend on the batch
    assert two.activations == 2 * one.activations > 0  # activations are linear in B
    # activations linear in T and (apart from token indices) in H
    assert memory.training_estimate(HMMConfig(64, 1000, 16), 100).activations * 2 == \
        one.activations
    wide = memory.training_estimate(HMMConfig(128, 1000, 32), 100)
    assert 1.9 * one.activations < wide.activations < 2 * one.activations
    # transition work quadratic in H; a homogeneous model needs less; full batch needs more
    assert wide.counts == 4 * one.counts
    assert memory.training_estimate(HMMConfig(64, 1000, 32, True), 100).counts < one.counts
    full = memory.training_estimate(config, 100, full_batch=True)
    assert full.counts >= one.counts + one.parameters
    mle = memory.model_estimate(config, "mle", num_windows=10)
    assert mle.parameters == one.parameters and mle.counts > 0


def parameter_bytes(h: int, v: int, t: int, homogeneous: bool) -> int:
    """float32 initial [H], transitions [P_A, H, H], emissions [P_B, V, H] (P_A = T-1 and P_B = T,
    or 1 and 1 when homogeneous)."""
    pa, pb = (1, 1) if homogeneous else (t - 1, t)
    return 4 * (h + pa * h * h + pb * v * h)


def em_step_kinds(h: int, v: int, t: int, homogeneous: bool, b: int, dtype: torch.dtype
                  ) -> dict[str, tuple[int, int]]:
    """(counts, activations) bytes of one EM step on B windows as the module docstring writes
    them, for a mini-batch and a full-batch step: chunks of C = max(1, 2^26 // (H T)) windows
    (at most B), C T (d_c H + 64) bytes a chunk (d_c = 20 in float32, 14 in bfloat16), the
    transition work 4 (T-1) H^2 c (c = 3, or 2 homogeneous); mini-batch adds the batch's
    counts 8 B T H, full-batch a parameter-sized accumulator and one chunk's counts 4 C T H."""
    chunk = min(b, max(1, 2**26 // (h * t)))
    d_c = {torch.float32: 20, torch.bfloat16: 14}[dtype]
    per_chunk = chunk * t * (d_c * h + 64)
    transitions = 4 * (t - 1) * h * h * (2 if homogeneous else 3)
    return {"mini": (transitions, per_chunk + 8 * b * t * h),
            "full": (transitions + parameter_bytes(h, v, t, homogeneous),
                     per_chunk + 4 * chunk * t * h)}


# (h, v, t, homogeneous, B, dtype, full_batch, mini_batch, the kind that is the peak)
EM_SIZES = [
    (3, 5, 4, False, 7, torch.float32, False, None, "mini"),
    (3, 5, 4, True, 7, torch.bfloat16, False, None, "mini"),
    (5, 3, 1, False, 7, torch.float32, False, None, "mini"),  # T = 1: no transition matrix
    # a large batch of a small model: the mini-batch counts 8 B T H outweigh the full-batch
    # accumulator, which a run of full-batch epochs only must not be charged for
    (4, 6, 5, False, 1000, torch.float32, True, None, "full"),
    (4, 6, 5, False, 1000, torch.float32, True, True, "mini"),
    (3, 1000, 4, False, 2, torch.bfloat16, True, True, "full"),  # the accumulator outweighs
    (3, 1000, 4, False, 2, torch.bfloat16, False, False, "mini"),  # no epochs: mini-batch's
    (8192, 2, 32, False, 1000, torch.float32, False, None, "mini"),  # chunks of 256 windows
    (8192, 2, 32, True, 1000, torch.bfloat16, True, None, "full"),
]


@pytest.mark.parametrize("h, v, t, homogeneous, b, dtype, full, mini, peak", EM_SIZES)
def test_training_estimate_closed_form(h, v, t, homogeneous, b, dtype, full, mini, peak):
    """The estimate is the docstring's formula, with the larger kind where a run has both."""
    kinds = em_step_kinds(h, v, t, homogeneous, b, dtype)
    if full and mini:
        assert sum(kinds[peak]) == max(sum(kinds["mini"]), sum(kinds["full"]))
    estimate = memory.training_estimate(HMMConfig(h, v, t, homogeneous), b, full_batch=full,
                                        dtype=dtype, mini_batch=mini)
    assert (estimate.parameters, estimate.counts, estimate.activations) == \
        (parameter_bytes(h, v, t, homogeneous), *kinds[peak])
    if peak == "mini" and dtype == torch.float32 and b * h * t <= 2**26:  # one chunk
        # the unchunked float32 fit 4 B T (7 H + 16) of the docstring
        assert estimate.activations == 4 * b * t * (7 * h + 16)


def test_chunk_holds_as_many_windows_as_fit_in_2_26_entries():
    """The E-step's chunk: the most windows whose [C, T, H] entries stay within 2^26 (16,384
    windows at H = 128, T = 32; 2,048 at H = 1024), one window when even one does not fit."""
    assert memory.chunk_windows(128, 32) == 16_384
    assert memory.chunk_windows(1024, 32) == 2048
    for h, t in [(3, 4), (1000, 7), (8192, 32), (2**26, 1), (2**25 + 1, 2), (2**27, 1)]:
        chunk = memory.chunk_windows(h, t)
        assert isinstance(chunk, int) and chunk >= 1
        assert chunk == 1 or chunk * h * t <= 2**26, (h, t, chunk)
        assert (chunk + 1) * h * t > 2**26, (h, t, chunk)


def test_format_bytes():
    assert memory.format_bytes(851.94e9) == "851.9 GB"
    assert memory.format_bytes(12.3e9) == "12.3 GB"
    assert memory.format_bytes(2.5e15) == "2500.0 TB"


def test_absurd_hidden_states_fail_before_any_allocation(available, monkeypatch):
    available(12_300_000_000)

    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated before the memory check")

    monkeypatch.setattr(init_module.torch, "rand", no_allocation)
    monkeypatch.setattr(init_module.torch, "zeros", no_allocation)
    config = HMMConfig(100_000, 33_278, 32)
    needed = memory.format_bytes(memory.parameter_bytes(config))
    with pytest.raises(ParameterError, match=rf"H=100000, V=33278, T=32 needs about {needed} .*"
                       r"this cpu has 12\.3 GB available\. Use fewer hidden states") as info:
        HMM(100_000, 33_278, 32)
    assert isinstance(info.value, InsufficientMemoryError)
    assert "--device cuda" in str(info.value) and memory.SKIP_ENV in str(info.value)
    with pytest.raises(InsufficientMemoryError, match="MLE from labels"):
        mle_from_labels(np.zeros((2, 32), np.int64), np.zeros((2, 32), np.int64), config)


@pytest.mark.parametrize(("device", "free", "homogeneous", "other"), [
    ("cpu", 12_300_000_000, False, "cuda"),
    # the device in the message is the one checked, the fix offered the other device
    # (torch.device("cuda:1") needs no GPU: its free memory is set by the fixture)
    ("cuda:1", 10**9, True, "cpu")])
def test_training_message_names_batch_and_fixes(available, device, free, homogeneous, other):
    available(free)
    config = HMMConfig(100_000, 33_278, 32, homogeneous=homogeneous)
    needed = memory.format_bytes(memory.training_estimate(config, 4096).total)
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_training(config, 4096, device)
    shape = "H=100000, V=33278, T=32" + (", homogeneous" if homogeneous else "")
    assert str(info.value) == (
        f"{shape} needs about {needed} for parameters and EM counts (batch 4096); this "
        f"{device} has {memory.format_bytes(free)} available. Use fewer hidden states "
        "(--hidden-states), a smaller batch (--batch-size), bfloat16 activations (--dtype "
        f"bfloat16), or --device {other} (or set {memory.SKIP_ENV}=1 to skip this check)")
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_training(config, 4096, device, dtype=torch.bfloat16)
    assert f"(--batch-size), or --device {other}" in str(info.value)  # bf16 already
    with pytest.raises(InsufficientMemoryError,
                       match=rf"; this {device} has {memory.format_bytes(free)} available"):
        memory.check_sampling(config, 10**6, device)


def config_sizes(h: int, v: int, t: int, homogeneous: bool) -> str:
    """The sizes as the messages name them."""
    return f"H={h}, V={v}, T={t}" + (", homogeneous" if homogeneous else "")


@pytest.mark.parametrize("h, v, t, homogeneous, b, dtype, full, mini, peak",
                         [sizes for sizes in EM_SIZES if sizes[0] < 8192])
def test_training_check_refuses_one_byte_past_the_estimate(available, h, v, t, homogeneous, b,
                                                           dtype, full, mini, peak):
    """The check charges the docstring's peak for the run's kinds of epochs and compute dtype:
    exactly that much available passes, one byte less is refused, naming the batch and whether
    EM is full-batch; with the parameters already loaded only the rest has to fit."""
    config = HMMConfig(h, v, t, homogeneous)
    params = parameter_bytes(h, v, t, homogeneous)
    total = params + sum(em_step_kinds(h, v, t, homogeneous, b, dtype)[peak])
    kwargs = {"full_batch": full, "dtype": dtype, "mini_batch": mini}
    available(total)
    assert memory.check_training(config, b, **kwargs).total == total
    available(total - 1)
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_training(config, b, "cpu", **kwargs)
    mode = ", full-batch EM" if full else ""
    assert str(info.value).startswith(
        f"{config_sizes(h, v, t, homogeneous)} needs about {memory.format_bytes(total)} for "
        f"parameters and EM counts (batch {b}{mode}); this cpu has "
        f"{memory.format_bytes(total - 1)} available. Use "), str(info.value)
    assert "fewer hidden states (--hidden-states)" in str(info.value)
    available(total - params)
    memory.check_training(config, b, allocated=True, **kwargs)
    available(total - params - 1)
    with pytest.raises(InsufficientMemoryError, match="parameters already loaded"):
        memory.check_training(config, b, allocated=True, **kwargs)


@pytest.mark.parametrize("method, what, windows", [
    ("random", "random initialisation", 0), ("load", "loading", 0),
    ("mle", "MLE from labels", 10)])
def test_model_check_refuses_one_byte_past_the_estimate(available, method, what, windows):
    """Creating a model needs its parameters; MLE adds float64 transition counts
    8 (H + P_A H^2) and 48 bytes of indices per token of the windows read at once. Exactly
    that much available passes (on the default device, the cpu), one byte less is refused
    with a message naming the way the model is made and the fixes."""
    config = HMMConfig(3, 5, 4)
    params = parameter_bytes(3, 5, 4, False)
    total = params + (8 * (3 + 3 * 3 * 3) + 48 * windows * 4 if method == "mle" else 0)
    kwargs = {"num_windows": windows} if method == "mle" else {}
    if method == "random":  # the default method
        assert memory.model_estimate(config).total == total
    available(total)
    assert memory.check_model(config, method=method, **kwargs).total == total
    available(total - 1)
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_model(config, method=method, **kwargs)
    assert str(info.value) == (
        f"H=3, V=5, T=4 needs about {memory.format_bytes(total)} for its parameters ({what}; "
        f"the parameters alone are {memory.format_bytes(params)}); this cpu has "
        f"{memory.format_bytes(total - 1)} available. Use fewer hidden states (--hidden-states) "
        f"or --device cuda (or set {memory.SKIP_ENV}=1 to skip this check)")
    with pytest.raises(ValueError, match=r"^unknown method 'magic'$"):
        memory.model_estimate(config, "magic")


def test_train_checks_the_batch_before_the_first_step(available):
    hmm = HMM(4, 6, 5, seed=0)
    before = {k: v.clone() for k, v in hmm.parameters().items()}
    windows = TokenWindows(np.arange(40) % 6, 5)
    config = EMConfig(epochs=1, step_size=0.5, final_full_batch=0, batch_size=8)
    estimate = memory.training_estimate(hmm.config, 8)
    # the parameters already exist: only the rest has to fit
    available(estimate.total - estimate.parameters)
    train(hmm, windows, config, progress=False)
    assert not torch.equal(hmm.emission, before["emission"])
    hmm = HMM(4, 6, 5, seed=0)
    available(estimate.total - estimate.parameters - 1)
    with pytest.raises(InsufficientMemoryError, match=r"batch 8\).*parameters already loaded"):
        train(hmm, windows, config, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in hmm.parameters().items())


def sampling_bytes(h: int, v: int, t: int, n: int, prefix: int = 0) -> int:
    """The sampling activations written out from the tensors ``sampling_estimate`` names: the
    int64 output [N, T]; the [N, H] state and [N, V] word distributions of one step at 10
    bytes an entry (2.5 float32 copies: gathered rows, multinomial's copies); over a prefix of
    L tokens the forward pass's [N, L, H] emissions and temporaries at 10 bytes an entry and
    64 bytes of indices per token."""
    return n * (8 * t + 10 * (h + v) + prefix * (10 * h + 64))


@pytest.mark.parametrize("h, v, t, homogeneous, n, prefix", [
    (3, 5, 4, False, 7, 0), (3, 5, 4, True, 7, 2), (64, 1000, 32, False, 100, 31)])
def test_sampling_estimate_closed_form(h, v, t, homogeneous, n, prefix):
    config = HMMConfig(h, v, t, homogeneous)
    pa, pb = (1, 1) if homogeneous else (t - 1, t)
    params = 4 * (h + pa * h * h + pb * v * h)
    estimate = memory.sampling_estimate(config, n, prefix)
    assert (estimate.parameters, estimate.counts, estimate.activations) == \
        (params, 0, sampling_bytes(h, v, t, n, prefix))
    assert estimate.total == params + sampling_bytes(h, v, t, n, prefix)
    # the defaults: no prefix, on the cpu
    for default in (memory.sampling_estimate(config, n), memory.check_sampling(config, n)):
        assert (default.parameters, default.counts, default.activations) == \
            (params, 0, sampling_bytes(h, v, t, n))


def test_sampling_counts_the_prefix_and_refuses_past_the_boundary(available, make_hmm):
    """Only the activations have to fit (the parameters exist): exactly that much is enough,
    one byte less is refused, before anything is drawn."""
    hmm = make_hmm(3, 5, 4, seed=0)
    n, prefix = 1500, torch.tensor([1, 2])
    need = sampling_bytes(3, 5, 4, n, prefix=2)
    available(need)
    assert hmm.sample(n, prefix=prefix, seed=0).shape == (n, 4)
    available(need - 1)
    with pytest.raises(InsufficientMemoryError) as info:
        hmm.sample(n, prefix=prefix, seed=0)
    assert str(info.value) == (
        f"drawing 1,500 samples from H=3, V=5, T=4 needs about {memory.format_bytes(need)} "
        f"besides the parameters; this cpu has {memory.format_bytes(need - 1)} available. Ask "
        f"for fewer samples (or set {memory.SKIP_ENV}=1 to skip this check)")
    config = HMMConfig(1000, 50_000, 32, True)
    available(12_300_000_000)
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_sampling(config, 10**6)
    assert str(info.value).startswith(
        f"drawing 1,000,000 samples from H=1000, V=50000, T=32, homogeneous needs about "
        f"{memory.format_bytes(sampling_bytes(1000, 50_000, 32, 10**6))} besides the "
        "parameters; this cpu has 12.3 GB available. Ask for fewer samples")


def test_model_message_offers_no_batch_flag(available):
    """Creating or loading a model has no batch: the fixes are fewer states or the other
    device."""
    available(12_300_000_000)
    config = HMMConfig(100_000, 33_278, 32)
    params = memory.format_bytes(4 * (100_000 + 31 * 100_000**2 + 32 * 33_278 * 100_000))
    with pytest.raises(InsufficientMemoryError) as info:
        memory.check_model(config, "cpu")
    assert str(info.value) == (
        f"H=100000, V=33278, T=32 needs about {params} for its parameters (random "
        f"initialisation; the parameters alone are {params}); this cpu has 12.3 GB available. "
        f"Use fewer hidden states (--hidden-states) or --device cuda (or set {memory.SKIP_ENV}=1 "
        "to skip this check)")


def test_describe_is_one_log_line():
    estimate = memory.MemoryEstimate(10**9, 2 * 10**9, 3 * 10**9)
    assert memory.describe(estimate, torch.bfloat16) == (
        "memory: about 6.0 GB at the peak (parameters 1.0 GB, counts 2.0 GB, activations "
        "3.0 GB; E-step in bfloat16)")


def test_loading_a_checkpoint_too_large_for_the_device(available, tmp_path):
    HMM(3, 5, 4, seed=0).save_pretrained(tmp_path / "m")
    available(100)
    with pytest.raises(InsufficientMemoryError, match="loading"):
        HMM.from_pretrained(tmp_path / "m")


def test_escape_hatch_and_unknown_availability(available, monkeypatch):
    available(1)
    with pytest.raises(InsufficientMemoryError):
        HMM(2, 3, 4)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    HMM(2, 3, 4).validate()
    monkeypatch.setenv(memory.SKIP_ENV, "0")
    with pytest.raises(InsufficientMemoryError):
        HMM(2, 3, 4)
    available(None)  # a device whose free memory is unknown is not checked
    HMM(2, 3, 4).validate()


def test_available_bytes_reads_this_machine():
    cpu = device_memory.available_bytes("cpu")
    if Path("/proc/meminfo").is_file():
        assert cpu is not None and cpu > 0
    assert device_memory.available_bytes("meta") is None


@pytest.fixture
def corpus(tmp_path):
    return write_word_corpus(tmp_path / "wt")


@pytest.mark.parametrize("command", ["train", "lvd"])
def test_cli_absurd_hidden_states_is_a_one_line_error(corpus, tmp_path, capsys, monkeypatch,
                                                      command):
    """No monkeypatching of the available memory: 10^7 states need petabytes anywhere. For
    `lvd` the check comes before the encoder is loaded (the folder given does not exist)."""
    monkeypatch.delenv(memory.SKIP_ENV, raising=False)
    extra = ["--encoder", str(tmp_path / "no-encoder")] if command == "lvd" else []
    argv = [command, "--data-dir", str(corpus), "--hidden-states", "10000000", "--length", "6",
            "--batch-size", "4096", "--final-full-batch", "0", "--device", "cpu",
            "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"hmmlvd {command}: error: H=10000000, V=12, T=6 needs about ")
    assert "TB for parameters and EM counts (batch 4096)" in err
    assert ("Use fewer hidden states (--hidden-states), a smaller batch (--batch-size), "
            in err and "--device cuda" in err)
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run").exists()


# Run in a fresh process: ``reset_peak()`` sets the peak resident memory (VmHWM) to now and
# returns the current resident memory; ``status("VmHWM")`` reads the peak since then.
PEAK_RSS = textwrap.dedent("""
    import json, re, sys
    import torch
    torch.set_num_threads(1)

    def status(key):
        text = open("/proc/self/status").read()
        return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024

    def reset_peak():
        open("/proc/self/clear_refs", "w").write("5")
        return status("VmRSS")
""")

MEASURE = PEAK_RSS + textwrap.dedent("""
    from hmmlvd.hmm import HMM, HMMConfig, expected_counts, maximize
    from hmmlvd.hmm import memory

    h, v, t, b, hom = 384, 2000, 32, 512, False
    x = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(0))
    base = reset_peak()
    hmm = HMM(h, v, t, hom, seed=0)
    maximize(hmm, expected_counts(hmm, x), 0.5, 1e-3)
    print(json.dumps({"measured": status("VmHWM") - base,
                      "estimate": memory.training_estimate(HMMConfig(h, v, t, hom), b).total}))
""")

MEASURE_SAMPLING = PEAK_RSS + textwrap.dedent("""
    from hmmlvd.hmm import HMM, memory

    h, v, t, n, length = (int(a) for a in sys.argv[1:])
    hmm = HMM(h, v, t, seed=0)
    prefix = torch.randint(0, v, (n, length), generator=torch.Generator().manual_seed(0))
    base = reset_peak()
    hmm.sample(n, prefix if length else None, seed=0)
    print(json.dumps({"measured": status("VmHWM") - base,
                      "estimate": memory.sampling_estimate(hmm.config, n, length).activations}))
""")


def measured_peak(script: str, *args: object) -> dict:
    """The JSON line a MEASURE script prints, run in a fresh process (skips where the peak
    resident memory cannot be reset)."""
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode and "clear_refs" in done.stderr:
        pytest.skip("cannot reset the peak RSS here")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc peak RSS")
@pytest.mark.parametrize("sizes", [(128, 8000, 16, 2000, 0), (1024, 50, 16, 1000, 15)],
                         ids=["word distributions", "a long prefix"])
def test_sampling_estimate_covers_the_measured_peak(sizes):
    """Drawing N windows in a fresh process (the model made first): the estimated activations
    are at least the measured rise of the peak resident memory, and at most 2.5x it (a run
    that would fit is not refused for want of a few times its memory). One size dominated by
    the [N, V] word distributions, one by a 15-token prefix's forward pass over H = 1024."""
    result = measured_peak(MEASURE_SAMPLING, *sizes)
    assert 1 <= result["estimate"] / result["measured"] <= 2.5, result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc peak RSS")
def test_estimate_is_within_1_5x_of_the_measured_peak():
    """One EM step (model creation included) at H=384, V=2000, T=32, B=512 in a fresh process:
    peak resident memory above the starting point vs the estimate."""
    result = measured_peak(MEASURE)
    ratio = result["estimate"] / result["measured"]
    assert 1 / 1.5 < ratio < 1.5, result


def test_mle_check_counts_the_windows_of_one_chunk(available):
    """MLE reads the labelled windows chunk by chunk: a device with room for the index
    temporaries of 100 windows refuses 1000 windows read at once (before counting), takes
    the same 1000 windows read 50 at a time, and a handful of windows in any chunk size."""
    config = HMMConfig(3, 5, 4)
    available(memory.model_estimate(config, "mle", num_windows=100, chunk_size=100).total)
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(0, 5, size=(1000, 4)), rng.integers(0, 3, size=(1000, 4))
    with pytest.raises(InsufficientMemoryError, match="MLE from labels"):
        mle_from_labels(tokens, labels, config, chunk_size=1000)
    chunked = mle_from_labels(tokens, labels, config, chunk_size=50)
    available(None)  # unknown availability: not checked
    whole = mle_from_labels(tokens, labels, config, chunk_size=1000)
    for name, value in whole.parameters().items():
        torch.testing.assert_close(chunked.parameters()[name], value)
    available(memory.model_estimate(config, "mle", num_windows=100, chunk_size=100).total)
    mle_from_labels(tokens[:5], labels[:5], config, chunk_size=65536)


def test_mle_estimate_adds_the_integer_counts_when_a_cell_can_pass_2_24():
    """Below 2**24 tokens per emission cell the counts are the float32 parameters themselves;
    from 2**24 on, int32 counts [P_B, V, H] sit beside them until converted."""
    config = HMMConfig(num_states=8, vocab_size=100, length=4)  # 4 emission positions
    below = memory.model_estimate(config, "mle", num_windows=2 ** 24 - 1, chunk_size=1024)
    at = memory.model_estimate(config, "mle", num_windows=2 ** 24, chunk_size=1024)
    assert at.total - below.total == 4 * 4 * 100 * 8
    pooled = HMMConfig(num_states=8, vocab_size=100, length=4, homogeneous=True)  # N*T per cell
    below = memory.model_estimate(pooled, "mle", num_windows=2 ** 22 - 1, chunk_size=1024)
    at = memory.model_estimate(pooled, "mle", num_windows=2 ** 22, chunk_size=1024)
    assert at.total - below.total == 4 * 1 * 100 * 8


@pytest.mark.parametrize("homogeneous, windows, dtype", [
    (False, 2 ** 24 - 1, torch.float32), (False, 2 ** 24, torch.int32),
    (False, 2 ** 31 - 1, torch.int32), (False, 2 ** 31, torch.int64),
    (True, 2 ** 19 - 1, torch.float32), (True, 2 ** 19, torch.int32),  # T = 32 tokens pooled
    (True, 2 ** 26 - 1, torch.int32), (True, 2 ** 26, torch.int64),
    (False, 0, torch.float32)])
def test_mle_emission_counts_switch_dtype_where_a_cell_could_stop_counting(homogeneous, windows,
                                                                           dtype):
    """A cell [position, word, state] can count every window of its position (N, or N·T when
    one position pools all T = 32): float32 counts by ones up to 2**24, int32 up to 2**31 - 1,
    so the largest possible count picks the first dtype that holds it exactly."""
    config = HMMConfig(4, 10, 32, homogeneous)
    assert memory.mle_emission_count_dtype(config, windows) == dtype


@pytest.mark.parametrize("allocated", [False, True])
def test_a_full_batch_refusal_offers_mini_batch_epochs_only_where_they_would_fit(available,
                                                                                 allocated):
    """Full-batch epochs add count sums as large as the parameters. When memory is short only
    for those, the refusal offers mini-batch epochs alone first; when even those would not fit,
    it does not."""
    h, v, t, b = 64, 500, 8, 16
    config = HMMConfig(h, v, t)
    params = parameter_bytes(h, v, t, False)
    kinds = em_step_kinds(h, v, t, False, b, torch.float32)
    both = params + max(sum(kinds["mini"]), sum(kinds["full"]))
    mini = params + sum(kinds["mini"])
    assert both > mini  # the full-batch sums are the larger kind at these sizes
    loaded = params if allocated else 0
    for free, offered in ((mini - loaded, True), (mini - loaded - 1, False)):
        available(free)
        with pytest.raises(InsufficientMemoryError) as info:
            memory.check_training(config, b, "cpu", full_batch=True, mini_batch=True,
                                  allocated=allocated)
        assert ("Use mini-batch epochs only (--final-full-batch 0), fewer hidden states"
                in str(info.value)) is offered, str(info.value)
        assert "--hidden-states" in str(info.value)
