"""The sklearn-like verbs fit / score / log_likelihood / sample, the same on HMM, Circuit and
PatchCircuit: each agrees with the function it wraps, fit raises the likelihood on tiny data,
and the config dataclasses (EMConfig, CircuitConfig, PatchCircuitConfig) refuse bad values
when they are made."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError, ParameterError
from hmmlvd.data import TokenWindows
from hmmlvd.hmm import HMM, load_checkpoint, queries, train
from hmmlvd.hmm.dfa import banned
from hmmlvd.image import PatchCircuit, load_pretrained
from hmmlvd.image.patch_circuit import PatchCircuitConfig
from hmmlvd.pc import Circuit, fit_em, inpaint, poon_domingos, sample
from hmmlvd.pc.circuit import CircuitConfig
from hmmlvd.pc.em import EMConfig, em_step
from hmmlvd.pc.structures import hclt_region_graph


# ----- models on tiny data --------------------------------------------------------------------
def chain(num_variables: int):
    return hclt_region_graph([(j, j + 1) for j in range(num_variables - 1)],
                             num_variables=num_variables)


def make_hmm(seed: int = 0) -> HMM:
    return HMM(3, 5, length=4, seed=seed)


def make_circuit(seed: int = 1, root_size: int = 1) -> Circuit:
    return Circuit(poon_domingos(2, 3, delta=1), 3, input="categorical", num_categories=3,
                   product="einsum", root_size=root_size, seed=seed)


def make_patch_circuit(seed: int = 1) -> PatchCircuit:
    """2x4 binary images, 2 patches of 2x2, 3 latent values."""
    return PatchCircuit((2, 4, 1), 2, [chain(4)] * 6, chain(2), 3, 2, 2, num_categories=2,
                        seed=seed)


def circuit_data(n: int = 60, seed: int = 0) -> torch.Tensor:
    """[n, 6] values 0..2 with structure (x_{j+1} = x_j mostly), so EM has something to
    learn."""
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, 3, (n, 1), generator=gen)
    noise = torch.randint(0, 3, (n, 6), generator=gen)
    keep = torch.rand(n, 6, generator=gen) < 0.8
    return torch.where(keep, first.expand(-1, 6), noise)


def image_data(n: int = 64, seed: int = 0) -> torch.Tensor:
    """[n, 8] binary images: the top row copied to the bottom row, with some noise."""
    gen = torch.Generator().manual_seed(seed)
    top = torch.randint(0, 2, (n, 4), generator=gen)
    flip = (torch.rand(n, 4, generator=gen) < 0.1).long()
    return torch.cat([top, top ^ flip], 1)


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ----- HMM ------------------------------------------------------------------------------------
def test_hmm_score_is_the_mean_log_likelihood():
    hmm = make_hmm()
    x = hmm.sample(40, seed=3)
    assert hmm.score(x) == pytest.approx(float(hmm.log_likelihood(x).double().mean()), 1e-6)
    assert hmm.score(x, batch_size=7) == pytest.approx(hmm.score(x), 1e-9)
    windows = TokenWindows(x.flatten().numpy(), 4)
    expected = float(hmm.log_likelihood(windows[:]).double().mean())
    assert hmm.score(windows, batch_size=9) == pytest.approx(expected, 1e-6)
    assert hmm.score(x[:, :2]) == pytest.approx(float(hmm.log_likelihood(x[:, :2]).mean()),
                                                 1e-6)  # prefixes, as log_likelihood


def test_hmm_sample_seed_is_a_seeded_generator():
    hmm = make_hmm()
    seeded = hmm.sample(10, seed=5)
    assert torch.equal(seeded, hmm.sample(10, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(seeded, hmm.sample(10, seed=5))
    assert not torch.equal(seeded, hmm.sample(10, seed=6))
    with pytest.raises(DataError, match=r"^give a seed or a generator, not both$"):
        hmm.sample(2, generator=torch.Generator(), seed=1)
    with pytest.raises(DataError, match=r"^seed must be >= 0, got -1$"):
        hmm.sample(2, seed=-1)


def test_hmm_infill_and_constrained_sample_take_the_seed_or_the_generator():
    """The same draws as the query functions given a generator seeded so, whatever torch's
    global generator holds; a seed is not the default generator."""
    hmm = make_hmm()
    x = hmm.sample(3, seed=1)
    mask = torch.tensor([[True, False, False, True]] * 3)
    dfa = banned([0])

    def fresh(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    infilled = queries.infill_samples(hmm, x, mask, 6, fresh(4))
    drawn = queries.constrained_sample(hmm, 12, dfa, None, fresh(4))
    for global_seed, kwargs in ((0, lambda: {"seed": 4}), (1, lambda: {"generator": fresh(4)})):
        torch.manual_seed(global_seed)
        assert torch.equal(hmm.infill(x, mask, 6, **kwargs()), infilled)
        assert torch.equal(hmm.sample(12, constraint=dfa, **kwargs()), drawn)
    assert not torch.equal(hmm.infill(x, mask, 6, seed=5), infilled)
    assert hmm.infill(x, mask, seed=0).shape == (3, 1, 4)  # one sample by default


@pytest.mark.parametrize("as_windows", [False, True])
def test_hmm_fit_is_train_and_raises_the_likelihood(as_windows):
    data = make_hmm(seed=7).sample(200, seed=1)
    config = EMConfig(epochs=5, step_size=1.0, final_full_batch=0, batch_size=200,
                      full_batch=True)
    hmm = make_hmm()
    before = hmm.score(data)
    windows = TokenWindows.from_rows(data)
    assert hmm.fit(windows if as_windows else data, config, progress=False) is hmm
    assert hmm.score(data) > before + 0.1
    assert len(hmm.fit_history) == 5 and hmm.fit_history[-1] > hmm.fit_history[0]
    # per window: the first full-batch epoch scores the data under the starting parameters
    assert hmm.fit_history[0] == pytest.approx(before, rel=1e-5)
    reference = make_hmm()
    train(reference, windows, config, progress=False)
    for name, p in hmm.parameters().items():
        assert torch.equal(p, reference.parameters()[name]), name


def test_hmm_fit_defaults_to_emconfig_with_a_progress_bar(capsys):
    data = make_hmm(seed=7).sample(200, seed=1)
    capsys.readouterr()
    hmm = make_hmm().fit(data)
    assert "batch/s" in capsys.readouterr().err  # tqdm's bar, counting batches
    reference = make_hmm()
    train(reference, TokenWindows.from_rows(data), EMConfig(), progress=False)
    for name, p in hmm.parameters().items():
        assert torch.equal(p, reference.parameters()[name]), name
    config = EMConfig(epochs=1, final_full_batch=0, batch_size=50)
    make_hmm().fit(data, config, progress=False)
    assert capsys.readouterr().err == ""
    make_hmm().fit(data, config, progress=True)
    assert "batch/s" in capsys.readouterr().err


def test_hmm_fit_checkpoints_into_out(tmp_path):
    """``out`` (a str or a path) gets the run's checkpoints: the newest one holds the fitted
    model and the config."""
    data = make_hmm(seed=7).sample(100, seed=1)
    config = EMConfig(epochs=2, final_full_batch=0, batch_size=50)
    hmm = make_hmm().fit(data, config, out=str(tmp_path / "run"), progress=False)
    saved, saved_config, _ = load_checkpoint(tmp_path / "run")
    assert saved_config == config
    for name, p in hmm.parameters().items():
        assert torch.equal(p, saved.parameters()[name]), name
    assert not torch.equal(hmm.emission, make_hmm().emission)  # it was trained


def test_hmm_fit_refuses_bad_input():
    hmm = make_hmm()
    with pytest.raises(DataError, match="must be an EMConfig"):
        hmm.fit(torch.zeros(3, 4, dtype=torch.long), {"epochs": 1})
    with pytest.raises(DataError, match=r"^config must be an EMConfig, got dict$"):
        train(hmm, TokenWindows(np.zeros(12, dtype=np.int64), 4), {"epochs": 1})
    with pytest.raises(DataError, match="leaf_prior 'marginal' is for circuits"):
        hmm.fit(torch.zeros(3, 4, dtype=torch.long), EMConfig(leaf_prior="marginal"))
    with pytest.raises(DataError, match="length"):
        hmm.fit(torch.zeros(3, 2, dtype=torch.long), progress=False)
    with pytest.raises(DataError, match="length 2, the model needs T=4"):
        hmm.fit(torch.zeros(3, 4, dtype=torch.long), valid=torch.zeros(3, 2, dtype=torch.long),
                progress=False)
    with pytest.raises(DataError):
        hmm.fit(torch.full((3, 4), 9), progress=False)  # ids beyond the vocabulary
    with pytest.raises(DataError):
        TokenWindows.from_rows(np.zeros((0, 4), dtype=np.int64))


# ----- Circuit --------------------------------------------------------------------------------
def test_circuit_score_and_sample_agree_with_the_functions():
    circuit = make_circuit()
    x = circuit_data()
    assert circuit.score(x) == pytest.approx(float(circuit.log_likelihood(x).double().mean()),
                                             1e-6)
    # float32 matrix products may round differently at another batch size: agree to 1e-6
    assert circuit.score(x, batch_size=7) == pytest.approx(circuit.score(x), 1e-6)
    assert torch.equal(circuit.sample(9, seed=4), sample(circuit, 9, seed=4))
    missing = torch.zeros_like(x[:5], dtype=torch.bool)
    missing[:, 3:] = True
    assert torch.equal(circuit.inpaint(x[:5], missing, seed=2),
                       inpaint(circuit, x[:5], missing, seed=2))


def test_circuit_score_with_several_roots_uses_output_0():
    circuit = make_circuit(root_size=2)
    x = circuit_data()
    assert circuit.score(x) == pytest.approx(float(circuit.log_likelihood(x)[:, 0].mean()),
                                             1e-6)


def test_circuit_fit_is_fit_em_and_raises_the_likelihood():
    x = circuit_data()
    config = EMConfig(epochs=4, batch_size=20, step_size=1.0, pseudocount=0.01,
                      full_batch=True, final_full_batch=0)
    circuit = make_circuit()
    before = circuit.score(x)
    assert circuit.fit(x, config, progress=False) is circuit
    assert circuit.score(x) > before + 0.1
    assert len(circuit.fit_history) == 4
    assert all(b >= a - 1e-4 for a, b in itertools.pairwise(circuit.fit_history))
    by_config, by_keywords = make_circuit(), make_circuit()
    assert fit_em(by_config, x, config, progress=False) == circuit.fit_history
    fit_em(by_keywords, x, epochs=4, batch_size=20, step_size=1.0, pseudocount=0.01,
           full_batch=True, progress=False)
    assert same_parameters(circuit, by_config) and same_parameters(circuit, by_keywords)


def test_fit_em_keywords_override_the_config():
    x = circuit_data()
    a, b = make_circuit(), make_circuit()
    fit_em(a, x, EMConfig(epochs=3, batch_size=16, step_size=0.5, final_full_batch=0), epochs=1,
           progress=False)
    fit_em(b, x, EMConfig(epochs=1, batch_size=16, step_size=0.5, final_full_batch=0),
           progress=False)
    assert same_parameters(a, b)


def test_circuit_config_round_trip_and_from_config(tmp_path):
    circuit = make_circuit()
    assert circuit.config == CircuitConfig(3, "categorical", 3, "einsum", 1)
    assert CircuitConfig.from_dict(circuit.config.to_dict()) == circuit.config
    rebuilt = Circuit.from_config(circuit.graph, circuit.config, seed=1)
    assert same_parameters(rebuilt, circuit)
    circuit.save_pretrained(tmp_path / "c")
    loaded = Circuit.from_pretrained(tmp_path / "c")
    assert loaded.config == circuit.config and same_parameters(loaded, circuit)
    assert isinstance(load_pretrained(tmp_path / "c"), Circuit)
    assert CircuitConfig(2, "bernoulli").num_categories == 2
    assert CircuitConfig(2, "gaussian", num_categories=7).num_categories is None


@pytest.mark.parametrize("kwargs, message", [
    ({"num_units": 0}, "num_units must be a positive integer"),
    ({"num_units": 2.0}, "num_units"),
    ({"num_units": 2, "input": "poisson"}, "input must be one of"),
    ({"num_units": 2, "product": "cp"}, "product must be one of"),
    ({"num_units": 2, "root_size": True}, "root_size"),
    ({"num_units": 2}, "num_categories >= 1"),  # categorical without num_categories
    ({"num_units": 2, "input": "gaussian", "min_var": 0.1, "max_var": 0.01}, "min_var"),
    ({"num_units": 2, "input": "gaussian", "max_var": math.nan}, "min_var"),
])
def test_circuit_config_refuses_bad_settings(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        CircuitConfig(**kwargs)


def test_circuit_config_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ParameterError, match="unknown"):
        CircuitConfig.from_dict({"num_units": 2, "num_categories": 2, "colour": "red"})
    with pytest.raises(ParameterError, match="lack"):
        CircuitConfig.from_dict({"input": "bernoulli"})
    with pytest.raises(ParameterError):
        Circuit.from_config(poon_domingos(2, 3, delta=1), {"num_units": 2})


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"epochs": 1.5}, "epochs must be an integer"),
    ({"batch_size": 0}, "batch size must be >= 1"),
    ({"batch_size": True}, "batch size must be an integer"),
    ({"step_size": 0}, "step size"),
    ({"step_size": 1.5}, "step size"),
    ({"pseudocount": -0.1}, "pseudocount"),
    ({"pseudocount": math.inf}, "pseudocount"),
    ({"full_batch": 1}, "full_batch"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
])
def test_em_config_refuses_bad_values(kwargs, message):
    with pytest.raises(DataError, match=message):
        EMConfig(**kwargs)


def test_fit_em_checks_everything_before_the_first_batch():
    circuit = make_circuit()
    before = copy.deepcopy(circuit)
    x = circuit_data()
    with pytest.raises(DataError, match="EMConfig"):
        fit_em(circuit, x, 3)  # the old positional epochs: refused, not misread
    with pytest.raises(DataError, match="step size"):
        fit_em(circuit, x, step_size=2.0, progress=False)
    with pytest.raises(DataError, match="EMConfig"):
        circuit.fit(x, {"epochs": 1})
    assert same_parameters(circuit, before)


# ----- PatchCircuit ---------------------------------------------------------------------------
def test_patch_circuit_score_is_the_mean_log_likelihood():
    model = make_patch_circuit()
    x = image_data()
    assert model.score(x) == pytest.approx(float(model.log_likelihood(x).double().mean()),
                                           1e-6)
    assert torch.equal(model.sample(5, seed=3), model.sample(5, seed=3))


def test_patch_circuit_fit_is_joint_em_and_raises_the_likelihood():
    x = image_data()
    model = make_patch_circuit()
    before = model.score(x)
    config = EMConfig(epochs=5, batch_size=len(x), step_size=1.0, pseudocount=0.01,
                      full_batch=True, final_full_batch=0)
    assert model.fit(x, config, progress=False) is model
    assert model.score(x) > before + 0.1
    assert len(model.fit_history) == 5
    assert all(b >= a - 1e-4 for a, b in itertools.pairwise(model.fit_history))
    stepped = make_patch_circuit()  # full-batch EM with one batch = em_step on all data
    for _ in range(5):
        stepped.em_step(x, 1.0, 0.01)
    for p, q in zip(model.parameters(), stepped.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_patch_circuit_full_batch_sums_counts_over_batches():
    x = image_data()
    one, several = make_patch_circuit(), make_patch_circuit()
    one.fit(x, EMConfig(batch_size=len(x), full_batch=True, pseudocount=0.01, final_full_batch=0,
                        step_size=1.0), progress=False)
    several.fit(x, EMConfig(batch_size=10, full_batch=True, pseudocount=0.01, final_full_batch=0,
                            step_size=1.0), progress=False)
    for p, q in zip(one.parameters(), several.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_patch_circuit_failed_epoch_leaves_no_counts():
    model = make_patch_circuit()
    before = copy.deepcopy(model)
    bad = image_data(8)
    bad[5, 0] = 7  # out of range: full-batch epochs go in order, so batch 1 counts, batch 2 fails
    with pytest.raises(DataError):
        model.fit(bad, EMConfig(batch_size=4, full_batch=True, final_full_batch=0, step_size=1.0),
                  progress=False)
    assert same_parameters(model, before)
    model.fit(image_data(), EMConfig(full_batch=True, final_full_batch=0, step_size=1.0),
              progress=False)
    before.fit(image_data(), EMConfig(full_batch=True, final_full_batch=0, step_size=1.0),
               progress=False)
    assert same_parameters(model, before)


def test_patch_circuit_config_round_trip(tmp_path):
    model = make_patch_circuit()
    assert model.config == PatchCircuitConfig((2, 4, 1), 2, 3, 2, 2, 2, False)
    assert PatchCircuitConfig.from_dict(model.config.to_dict()) == model.config
    rebuilt = PatchCircuit.from_config(model.sub_graphs, model.top.graph, model.config, seed=1)
    assert same_parameters(rebuilt, model)
    model.save_pretrained(tmp_path / "p")
    loaded = PatchCircuit.from_pretrained(tmp_path / "p")
    assert loaded.config == model.config and same_parameters(loaded, model)
    assert isinstance(load_pretrained(tmp_path / "p"), PatchCircuit)


@pytest.mark.parametrize("change, message", [
    ({"image_shape": (2, 4)}, "image_shape"),
    ({"image_shape": (2.0, 4, 1)}, "image_shape"),
    ({"patch": 0}, "patch"),
    ({"num_latents": -1}, "num_latents"),
    ({"sub_units": "2"}, "sub_units"),
    ({"tie_inputs": "yes"}, "tie_inputs"),
])
def test_patch_circuit_config_refuses_bad_settings(change, message):
    settings = {"image_shape": (2, 4, 1), "patch": 2, "num_latents": 3, "sub_units": 2,
                "top_units": 2, **change}
    with pytest.raises(ParameterError, match=message):
        PatchCircuitConfig(**settings)


def test_every_model_has_the_same_verbs():
    for model in (make_hmm(), make_circuit(), make_patch_circuit()):
        for verb in ("fit", "score", "log_likelihood", "sample", "save_pretrained",
                     "from_pretrained"):
            assert callable(getattr(model, verb)), (type(model).__name__, verb)


def test_em_step_still_matches_one_mini_batch_fit():
    x = circuit_data(20)
    a, b = make_circuit(), make_circuit()
    em_step(a, x, 0.5, 0.01)
    b.fit(x, EMConfig(epochs=1, batch_size=len(x), step_size=0.5, pseudocount=0.01,
                      final_full_batch=0), progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)
