"""The image LVD pipeline (distillation: features -> latents -> structures; then EM stages a,
b, c) on tiny synthetic images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hmmlvd.core.errors import DataError
from hmmlvd.data.images import flatten
from hmmlvd.lvd.image.distill import PatchLVDConfig, distil_patches, structures
from hmmlvd.pc.em import CIRCUIT_EM
from hmmlvd.pc.structures import learn_hclt
from hmmlvd.pipelines.image_lvd import LVDStages, train_image_lvd


def prototype_images(n: int = 120, seed: int = 0) -> np.ndarray:
    """[n, 4, 4, 1] images whose 2x2 patches are each one of two noisy prototypes (dark or
    bright), so each patch's latent has an obvious right answer."""
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, size=(n, 2, 2)).astype(bool)  # per patch
    base = np.where(bright, 200, 30).repeat(2, 1).repeat(2, 2)  # [n, 4, 4]
    noise = rng.integers(-20, 21, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)[..., None]


def tiny_run(images: np.ndarray, stage_c_epochs: int = 2, **changes):
    """Image LVD on ``images`` with tiny settings (``changes``: PatchLVDConfig fields)."""
    settings = dict(patch=2, num_latents=2, sub_units=2, top_units=2, featuriser="pca",
                    feature_dim=4, context=1, tree_bins=4)
    settings.update(changes)
    em = replace(CIRCUIT_EM, epochs=stage_c_epochs, batch_size=32, step_size=0.5,
                 pseudocount=0.01)
    return train_image_lvd(images, PatchLVDConfig(**settings), em,
                           LVDStages(stage_a_epochs=2, stage_b_epochs=3), progress=False)


def test_every_stage_runs_and_training_helps():
    images = prototype_images()
    model, history = tiny_run(images)
    assert len(history["stage_a"]) == 2 and len(history["stage_b"]) == 3
    assert len(history["stage_c"]) == 2
    assert history["stage_a"][-1] > history["stage_a"][0]
    assert history["stage_b"][-1] > history["stage_b"][0]
    assert set(history["timings"]) == {"features", "latents", "structure", "stage_a",
                                       "stage_b", "stage_c"}
    model.check_parameters()
    x = torch.as_tensor(flatten(prototype_images(50, seed=1)))
    trained = model.log_likelihood(x)
    assert torch.isfinite(trained).all()
    uniform = -16 * np.log(256)  # 16 pixels, 256 levels
    assert float(trained.mean()) > uniform + 10


def test_stage_c_does_not_decrease_training_likelihood_much():
    """Stage (c) is mini-batch EM on the pixels: the likelihood of the training images after
    it is at least that after stages (a) and (b) (small step sizes, fixed seed)."""
    images = prototype_images(80)
    x = torch.as_tensor(flatten(images))
    before, _ = tiny_run(images, stage_c_epochs=0)
    after, _ = tiny_run(images, stage_c_epochs=3)
    assert float(after.log_likelihood(x).mean()) > float(before.log_likelihood(x).mean())


def test_sub_structures_come_from_their_own_patches():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 4, size=(30, 2, 3))
    labels = np.zeros((30, 2), dtype=np.int64)
    labels[:15, 0] = 1  # patch 0: both values present; patch 1: value 1 absent
    subs, top = structures(patches, labels, 2, 4, bins=4)
    assert len(subs) == 4 and all(g.num_variables == 3 for g in subs)
    assert top.num_variables == 2
    assert subs[0] == learn_hclt(patches[15:, 0], 4, 4)  # (0, 0): its own patches
    assert subs[1] == learn_hclt(patches[:15, 0], 4, 4)
    assert subs[3] == learn_hclt(patches[:, 1], 4, 4)  # (1, 1) absent: all of patch 1's
    for graph in subs:
        graph.validate()


def test_bad_images_are_named():
    with pytest.raises(DataError, match="training images"):
        tiny_run(np.zeros((5, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="training images"):
        distil_patches(np.zeros((1, 4, 4, 1), dtype=np.uint8), PatchLVDConfig(patch=2))


@pytest.mark.parametrize("changes, named", [
    ({"num_latents": 0}, "--num-latents must be >= 1"),
    ({"tree_bins": 300}, "--tree-bins must be in [2, 256]"),
    ({"context": 1.5}, "--context must be an integer"),
    ({"featuriser": "sift"}, "--featuriser must be one of"),
    ({"tie_inputs": 1}, "--tie-inputs must be True or False")])
def test_bad_distillation_settings_are_named_with_their_flag(changes, named):
    with pytest.raises(DataError) as info:
        PatchLVDConfig(**changes)
    assert named in str(info.value)


@pytest.mark.parametrize("context", [5, -1])
def test_context_beyond_the_images_is_refused(context):
    with pytest.raises(DataError, match=r"--context must be in \[0, 4\]"):
        distil_patches(prototype_images(4), PatchLVDConfig(patch=2, context=context))


#: Golden values of two fixed-seed runs of image LVD through ``train_image_model``, recorded
#: by an independent run of the pipeline at commit 502bf59 (where one function ran
#: distillation and all three stages): the mean log-likelihood of every epoch of every stage,
#: and the sum of all parameters (log-space) of the trained model.
GOLDEN = {
    "tied_marginal_anneal": (
        dict(epochs=2, batch_size=16, step_size=0.5, final_step_size=0.1,
             leaf_prior="marginal", seed=3), {"tie_inputs": True}, False,
        {"stage_a": [-21.5460730765, -16.9186973254],
         "stage_b": [-3.0440676371, -2.8016770893, -2.7969065348],
         "stage_c": [-73.5519314236, -68.9322374132]}, -54253.99793710746),
    "data_prior_patience_final_full_batch": (
        dict(epochs=3, batch_size=32, step_size=0.3, pseudocount=0.5, pseudocount_per="data",
             patience=1, final_full_batch=2, seed=1), {}, True,
        {"stage_a": [-22.4102383084, -20.7046291775],
         "stage_b": [-2.9683114794, -2.7870792813, -2.7814921909],
         "stage_c": [-83.0474473741, -79.653366428, -78.2421983507, -75.8246405707,
                     -73.7714355469],
         "valid": [-78.4590755463, -76.6245807648, -75.6151683807, -73.2945667267,
                   -72.4914619446]}, -92183.09911371954),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_fixed_seed_runs_give_the_recorded_histories_and_parameters(case):
    """Every stage's data, batch order, EM settings (step-size anneal, leaf prior, pseudocount
    and what it is per, patience, full-batch epochs, tied inputs) and the initial parameters
    decide these numbers: a change to any of them on the way from the settings to the
    stages changes the history or the parameters."""
    from hmmlvd.image.baselines import StructureConfig
    from hmmlvd.pipelines.image_models import train_image_model

    em, extra, scored, history, parameter_sum = GOLDEN[case]
    images = prototype_images(90)
    lvd = dict(patch=2, num_latents=2, top_units=2, feature_dim=4, context=1,
               stage_a_epochs=2, stage_b_epochs=3, **extra)
    trained = train_image_model("lvd", images, 2, replace(CIRCUIT_EM, **em),
                                StructureConfig(tree_bins=4), lvd, progress=False,
                                valid_images=images[:20].copy() if scored else None)
    got = {k: v for k, v in trained.history.items() if k != "timings"}
    assert sorted(got) == sorted(history)
    for stage, values in history.items():
        np.testing.assert_allclose(got[stage], values, rtol=1e-6, err_msg=stage)
    total = sum(float(p.detach().double().sum()) for p in trained.model.parameters())
    assert total == pytest.approx(parameter_sum, rel=1e-7)
