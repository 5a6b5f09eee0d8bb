"""The patch-latent circuit of image LVD, against brute force on tiny binary images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hmmlvd.core.atomic import atomic_write_json
from hmmlvd.core.errors import CheckpointError, DataError, ParameterError
from hmmlvd.image import load_patch_circuit, load_pretrained, save_patch_circuit
from hmmlvd.image.parts_em import group_batches
from hmmlvd.image.patch_circuit import PatchCircuit, disjoint_union
from hmmlvd.pc import EMConfig, load_circuit
from hmmlvd.pc.structures import hclt_region_graph, poon_domingos, random_binary_trees


def chain(num_variables: int):
    return hclt_region_graph([(j, j + 1) for j in range(num_variables - 1)],
                             num_variables=num_variables)


def build(height=2, width=4, patch=2, latents=3, sub_units=2, top_units=2, seed=1, tie=False):
    size = patch * patch
    n = (height // patch) * (width // patch)
    return PatchCircuit((height, width, 1), patch, [chain(size)] * (n * latents), chain(n),
                        latents, sub_units, top_units, num_categories=2, seed=seed,
                        tie_inputs=tie)


def all_images(num_variables: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=num_variables)))


def test_disjoint_union_is_a_valid_graph_with_shifted_roots():
    graphs = [chain(3), poon_domingos(2, 2, delta=1)]
    union, roots = disjoint_union(graphs)
    union.validate()
    assert union.num_variables == 7
    assert roots == [(0, 1, 2), (3, 4, 5, 6)]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 2), (2, 2, 1)])
def test_probabilities_of_all_images_sum_to_one(shape, tie):
    height, width, patch = shape
    model = build(height, width, patch, tie=tie)
    x = all_images(height * width)
    assert float(model.log_likelihood(x).exp().sum()) == pytest.approx(1.0, abs=1e-5)
    for _ in range(3):
        model.em_step(x[torch.randint(0, len(x), (32,))], 0.5, 0.01)
    assert float(model.log_likelihood(x).exp().sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_likelihood_is_the_sum_over_latents_of_top_times_sub_circuits(tie):
    model = build(tie=tie)
    x = all_images(8)
    n, c = model.num_patches, model.num_latents
    z = torch.tensor(list(itertools.product(range(c), repeat=n)))  # [C^n, n]
    log_top = model.top.log_likelihood(z)  # [C^n]
    log_sub = model.group_log_likelihood(x)  # [B, n, C]
    picked = log_sub[:, torch.arange(n)[None, :], z].sum(-1)  # [B, C^n]
    expected = torch.logsumexp(log_top[None, :] + picked, dim=1)
    torch.testing.assert_close(model.log_likelihood(x), expected, atol=1e-5, rtol=1e-5)


def test_marginals_equal_brute_force_sums():
    model = build()
    x = all_images(8)
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, [1, 5]] = True  # pixels 1 and 5 (one in each patch) summed out
    marginal = model.log_likelihood(x, missing).exp()
    keep = [0, 2, 3, 4, 6, 7]
    brute = {}
    for row, p in zip(x.tolist(), model.log_likelihood(x).exp().tolist(), strict=True):
        key = tuple(row[i] for i in keep)
        brute[key] = brute.get(key, 0.0) + p
    for row, m in zip(x.tolist(), marginal.tolist(), strict=True):
        assert m == pytest.approx(brute[tuple(row[i] for i in keep)], abs=1e-6)


@pytest.mark.parametrize("tie", [False, True])
def test_full_batch_em_never_decreases_likelihood(tie):
    model = build(latents=2, sub_units=3, top_units=2, seed=4, tie=tie)
    data = all_images(8)[torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(0))]
    previous = float(model.log_likelihood(data).mean())
    for _ in range(6):
        model.em_step(data, 1.0, 0.0)
        current = float(model.log_likelihood(data).mean())
        assert current >= previous - 1e-5
        previous = current


def test_group_step_touches_only_present_groups():
    model = build(latents=3)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    patches = torch.randint(0, 2, (6, model.num_groups, 4))
    present = torch.zeros(6, model.num_groups, dtype=torch.bool)
    present[:4, 1] = True  # group 1 = patch 0, latent 1
    present[2:, 5] = True  # group 5 = patch 1, latent 2
    model.group_em_step(patches, present, 1.0, 0.1)
    weights = model.group_root.log_weight.detach()
    changed = (weights != before["group_root.log_weight"]).any(1)
    assert changed.tolist() == [g in (1, 5) for g in range(model.num_groups)]
    log_prob = model.parts.input_layer.log_prob.detach()  # [E, 2, K]
    entry_group = model.parts.input_layer.entry_var // 4
    moved = (log_prob != before["parts.input_layer.log_prob"]).flatten(1).any(1)
    assert set(entry_group[moved].tolist()) == {1, 5}
    for name, p in model.top.named_parameters():
        torch.testing.assert_close(p.detach(), before[f"top.{name}"], rtol=0, atol=0)


def test_group_step_raises_present_groups_likelihood():
    model = build(latents=2, sub_units=3)
    gen = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 2, (40, model.num_groups, 4), generator=gen)
    present = torch.rand(40, model.num_groups, generator=gen) < 0.7
    before = model.group_em_step(patches, present, 1.0, 0.0)
    after = model.group_em_step(patches, present, 1.0, 0.0)
    assert after >= before - 1e-6


def test_samples_follow_the_distribution():
    model = build(2, 2, 1, latents=2, sub_units=2, top_units=3, seed=2)
    x = all_images(4)
    probs = model.log_likelihood(x).exp()
    samples = model.sample(20000, seed=3)
    codes = (samples * torch.tensor([8, 4, 2, 1])).sum(1)
    counts = torch.bincount(codes, minlength=16).double()
    expected = probs.double() * 20000
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45.0  # 15 degrees of freedom: p < 1e-4 under the null


def test_inpainting_keeps_evidence_and_samples_the_conditional():
    model = build(seed=5)
    evidence = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0]])
    missing = torch.zeros(1, 8, dtype=torch.bool)
    missing[0, 4:] = True
    filled = model.inpaint(evidence.expand(8000, -1), missing.expand(8000, -1), seed=1)
    assert (filled[:, :4] == evidence[:, :4]).all()
    x = all_images(8)
    rows = (x[:, :4] == evidence[:, :4]).all(1)
    joint = model.log_likelihood(x[rows]).exp().double()
    conditional = joint / joint.sum()
    codes = (filled[:, 4:] * torch.tensor([8, 4, 2, 1])).sum(1)
    counts = torch.bincount(codes, minlength=16).double()
    chi2 = float(((counts - 8000 * conditional) ** 2 / (8000 * conditional)).sum())
    assert chi2 < 45.0


def test_bad_input_is_named():
    model = build()
    with pytest.raises(DataError, match="shape"):
        model.log_likelihood(torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(DataError, match="out of range"):
        model.log_likelihood(torch.full((1, 8), 2))
    with pytest.raises(DataError, match="integers"):
        model.log_likelihood(torch.zeros(1, 8))
    with pytest.raises(ParameterError, match="sub-circuit graphs"):
        PatchCircuit((2, 4, 1), 2, [chain(4)] * 3, chain(2), 2, 2, 2, num_categories=2)
    with pytest.raises(ParameterError, match="variables"):
        PatchCircuit((2, 4, 1), 2, [chain(4)] * 4, chain(3), 2, 2, 2, num_categories=2)


def test_group_batches_list_every_patch_once_in_its_group():
    labels = np.random.default_rng(0).integers(0, 3, size=(50, 2))
    batches = list(group_batches(labels, 3, 8, seed=1, epoch=0))
    ids = np.concatenate(batches)  # [rows, G]
    for i in range(2):
        for c in range(3):
            column = ids[:, i * 3 + c]
            assert sorted(column[column >= 0]) == sorted(np.flatnonzero(labels[:, i] == c))


def test_fit_parts_trains_the_sub_circuits_of_their_patches_only():
    """fit_parts on labels that give patch 0 only latent value 0 and patch 1 values 0 and 1:
    the sub-circuits of (0, 0), (1, 0) and (1, 1) change, those with no patches ((0, 1),
    (0, 2), (1, 2)) and the top circuit keep their parameters (compared with the model
    before). Guards against the sub-circuit EM touching groups it has no data for (a wrong
    present mask) or the top circuit."""
    model = build(seed=2)
    x = all_images(8)
    labels = np.zeros((len(x), 2), dtype=np.int64)
    labels[::2, 1] = 1
    before = model.group_log_likelihood(x)
    top = {k: v.clone() for k, v in model.top.named_parameters()}
    model.fit_parts(x, labels, EMConfig(epochs=2, batch_size=64, step_size=0.5,
                                        final_full_batch=0, pseudocount=0.1), progress=False)
    after = model.group_log_likelihood(x)
    assert len(model.fit_history) == 2
    changed = ~torch.isclose(after, before).all(0)  # [n, C]
    assert changed.tolist() == [[True, False, False], [True, True, False]]
    for name, value in model.top.named_parameters():
        assert torch.equal(value, top[name]), name


@pytest.mark.parametrize("labels, config, message", [
    (np.zeros((4, 3), np.int64), EMConfig(final_full_batch=0), "latent labels must be"),
    (np.full((4, 2), 3), EMConfig(final_full_batch=0), r"lie in \[0, 3\)"),
    (np.zeros((4, 2), np.int64), EMConfig(pseudocount_per="data"), "pseudocount_per 'batch'"),
    (np.zeros((4, 2), np.int64), EMConfig(patience=2), "patience 0")])
def test_fit_parts_refuses_what_it_cannot_use(labels, config, message):
    with pytest.raises(DataError, match=message):
        build().fit_parts(all_images(8)[:4], labels, config, progress=False)


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(tmp_path, tie):
    model = build(seed=7, tie=tie)
    x = all_images(8)
    model.em_step(x[:40], 0.5, 0.01)
    save_patch_circuit(model, tmp_path / "lvd")
    loaded = load_patch_circuit(tmp_path / "lvd")
    torch.testing.assert_close(loaded.log_likelihood(x), model.log_likelihood(x))
    assert loaded.num_parameters() == model.num_parameters()
    with pytest.raises(CheckpointError, match="not a 'circuit'"):
        load_circuit(tmp_path / "lvd")
    (tmp_path / "lvd" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        load_patch_circuit(tmp_path / "lvd")


def test_files_are_those_of_earlier_versions(tmp_path):
    """A patch circuit saved as hmmlvd.pc.checkpoint wrote it before hmmlvd.core.persist (spelled
    out here): the same bytes, and such a folder loads."""
    model = build(seed=3, tie=True)
    old = tmp_path / "old"
    old.mkdir()
    save_file({name: p.detach().contiguous() for name, p in model.named_parameters()},
              str(old / "model.safetensors"))

    def graph_dict(graph):
        return {"num_variables": graph.num_variables,
                "regions": [list(r) for r in graph.regions],
                "partitions": [[list(p.parent), [list(c) for c in p.children]]
                               for p in graph.partitions]}

    atomic_write_json(old / "config.json", {
        "format_version": 1, "model_type": "patch_circuit", "settings": {
            "image_shape": [2, 4, 1], "patch": 2, "num_latents": 3, "sub_units": 2,
            "top_units": 2, "num_categories": 2, "tie_inputs": True},
        "sub_graphs": [graph_dict(g) for g in model.sub_graphs],
        "top_graph": graph_dict(model.top.graph)})
    model.save_pretrained(tmp_path / "new")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "new" / name).read_bytes() == (old / name).read_bytes()
    x = all_images(8)
    assert torch.equal(load_patch_circuit(old).log_likelihood(x), model.log_likelihood(x))
    assert isinstance(load_pretrained(old), PatchCircuit)


def test_tied_inputs_are_shared_over_latent_values():
    untied, tied = build(latents=3, sub_units=2), build(latents=3, sub_units=2, tie=True)
    layer = tied.parts.input_layer
    assert layer.log_prob.shape == (8, 2, 2)  # (2 patches x 4 pixels), 2 values, K=2
    assert untied.num_parameters() - tied.num_parameters() == (24 - 8) * 2 * 2
    tied.em_step(all_images(8)[:50], 1.0, 0.01)
    group = layer.entry_var // 4
    position, pixel = group // 3, layer.entry_var % 4
    torch.testing.assert_close(layer.entry_row, position * 4 + pixel)
    repeated = random_binary_trees(4, depth=1, num_repetitions=3, seed=1)  # pixels in 2 leaves
    with pytest.raises(ParameterError, match="one leaf"):
        PatchCircuit((2, 4, 1), 2, [repeated] * 4, chain(2), 2, 2, 2,
                     num_categories=2, tie_inputs=True)
