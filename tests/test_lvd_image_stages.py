"""The stages of image LVD against oracles computed in the tests: stage (a) routes each patch to
the sub-circuit of its position and latent value, visits its batches in a new seeded order every
epoch, ``--tie-inputs`` reaches the trained model, and stage (c) adds the pseudocount it was
given with the meaning ``pseudocount_per`` says. Tiny 4x4 images in 2x2 patches; the latents
are fixed by the tests (k-means replaced) where the outcome depends on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hmmlvd.image.parts_em as parts_em
import hmmlvd.lvd.image.distill as lvd_distill
from hmmlvd.cli import main
from hmmlvd.data.images import ImageData, flatten
from hmmlvd.data.patches import patch_variables, split_patches
from hmmlvd.image import PatchCircuit
from hmmlvd.lvd.image.distill import PatchLVDConfig
from hmmlvd.pc import EMConfig
from hmmlvd.pc.em import CIRCUIT_EM
from hmmlvd.pipelines.image_lvd import LVDStages, train_image_lvd
from hmmlvd.pipelines.image_models import load_image_model, train_image_model

SIDE, PATCH, LEVELS = 4, 2, 256
NUM_PATCHES, PATCH_PIXELS = (SIDE // PATCH) ** 2, PATCH * PATCH


def routed_images(num_images: int, num_latents: int, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """[N, 4, 4, 1] images and latents [N, 4]: patch i of an image whose latent is c holds
    grey levels base(i, c) + {0, 1, 2}, a range of its own for every (position, value), so
    data routed to the wrong sub-circuit changes that sub-circuit's distributions. Every
    (position, value) has at least two patches."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_latents, size=(num_images, NUM_PATCHES))
    labels[:num_latents] = np.arange(num_latents)[:, None]  # every group gets two members
    labels[num_latents:2 * num_latents] = np.arange(num_latents)[:, None]
    index = patch_variables(SIDE, SIDE, PATCH, 1)  # [n, P] pixel of each patch entry
    pixels = np.zeros((num_images, SIDE * SIDE), dtype=np.int64)
    for i in range(NUM_PATCHES):
        base = 20 + 30 * (i * num_latents + labels[:, i])  # [N]
        pixels[:, index[i]] = base[:, None] + rng.integers(0, 3, size=(num_images, PATCH_PIXELS))
    return pixels.reshape(num_images, SIDE, SIDE, 1).astype(np.uint8), labels


@pytest.fixture
def fixed_latents(monkeypatch):
    """``fixed_latents(labels)``: the pipeline's k-means latents become ``labels`` [N, n]."""

    def use(labels: np.ndarray) -> None:
        def patch_latents(features, num_latents, **kwargs):
            assert features.shape[:2] == labels.shape and labels.max() < num_latents
            return labels.copy()

        monkeypatch.setattr(lvd_distill, "patch_latents", patch_latents)

    return use


#: The EM settings of the tiny runs (the rest: CIRCUIT_EM's).
TINY_EM = dict(epochs=0, batch_size=64, step_size=1.0, pseudocount=0.5)


def tiny_run(images: np.ndarray, stage_a_epochs: int = 2, **changes) -> PatchCircuit:
    """Image LVD on ``images`` with tiny settings, stages (b) and (c) skipped; ``changes``:
    PatchLVDConfig fields or EM settings (batch_size, step_size, pseudocount, seed)."""
    em = {k: changes.pop(k) for k in list(changes) if k in TINY_EM or k == "seed"}
    settings = dict(patch=PATCH, num_latents=2, sub_units=1, top_units=1, feature_dim=2,
                    context=0, tree_bins=4, seed=em.get("seed", 0))
    settings.update(changes)
    config = EMConfig(**{**CIRCUIT_EM.to_dict(), **TINY_EM, **em})
    model, _ = train_image_lvd(images, PatchLVDConfig(**settings), config,
                               LVDStages(stage_a_epochs=stage_a_epochs, stage_b_epochs=0),
                               progress=False)
    return model


# ----- stage (a): routing --------------------------------------------------------------------
def test_stage_a_trains_each_sub_circuit_on_the_patches_of_its_position_and_latent_value(
        fixed_latents):
    """With K = 1 a sub-circuit is a product of its pixels' distributions, and one full-batch
    M-step at step size 1 sets each to the smoothed histogram of the patches routed to it:
    log p_{i,c}(x_i) = sum_p log((count_{i,c,p}(x_ip) + a) / (N_{i,c} + 256 a)) over the
    patches at position i with latent c. Guards against stage (a) training a sub-circuit on
    another position's or latent value's patches (an index slip between group, position and
    latent value), or dropping some patches (a wrong present mask), which leaves models whose
    sub-circuits describe the wrong data."""
    num_latents, pseudocount = 2, 0.5
    images, labels = routed_images(24, num_latents)
    fixed_latents(labels)
    model = tiny_run(images, num_latents=num_latents, pseudocount=pseudocount)
    got = model.group_log_likelihood(torch.as_tensor(flatten(images))).double().numpy()
    patches = split_patches(images, PATCH).astype(np.int64)  # [N, n, P]
    expected = np.zeros((len(images), NUM_PATCHES, num_latents))
    for i in range(NUM_PATCHES):
        for c in range(num_latents):
            mine = patches[labels[:, i] == c, i]
            for p in range(PATCH_PIXELS):
                counts = np.bincount(mine[:, p], minlength=LEVELS)
                leaf = (counts + pseudocount) / (len(mine) + LEVELS * pseudocount)
                expected[:, i, c] += np.log(leaf[patches[:, i, p]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# ----- stage (a): batch order ----------------------------------------------------------------
def stage_a_batches(monkeypatch, images: np.ndarray, **changes) -> list[np.ndarray]:
    """The sample ids [B, G] of every stage-(a) E-step of a pipeline run, in call order."""
    seen: list[np.ndarray] = []
    real = parts_em.PartsLearner.e_step

    def e_step(self, ids):
        seen.append(np.array(ids, copy=True))
        return real(self, ids)

    monkeypatch.setattr(parts_em.PartsLearner, "e_step", e_step)
    tiny_run(images, **changes)
    monkeypatch.setattr(parts_em.PartsLearner, "e_step", real)
    return seen


def test_stage_a_visits_its_batches_in_a_new_seeded_order_every_epoch(monkeypatch,
                                                                        fixed_latents):
    """Each epoch of stage (a) shows every patch to its group once, in an order that differs
    from epoch to epoch (mini-batch EM visiting the same batches in the same order every epoch
    is biased towards the last ones), is the same when the run is repeated with the same seed
    and differs with another seed. Observed at the E-step."""
    num_latents, batch_size, epochs = 2, 3, 3
    images, labels = routed_images(30, num_latents, seed=1)
    fixed_latents(labels)
    groups = [np.flatnonzero(labels[:, i] == c)
              for i in range(NUM_PATCHES) for c in range(num_latents)]
    per_epoch = -(-max(len(g) for g in groups) // batch_size)
    config = dict(stage_a_epochs=epochs, batch_size=batch_size, seed=5)
    seen = stage_a_batches(monkeypatch, images, **config)
    assert len(seen) == epochs * per_epoch
    orders = [np.concatenate(seen[e * per_epoch:(e + 1) * per_epoch]) for e in range(epochs)]
    for order in orders:  # [rows, G]: column g lists group g's samples once
        for g, members in enumerate(groups):
            column = order[:, g]
            assert sorted(column[column >= 0]) == sorted(members), g
    for a in range(epochs):
        for b in range(a + 1, epochs):
            assert not np.array_equal(orders[a], orders[b]), (a, b)
    again = stage_a_batches(monkeypatch, images, **config)
    assert all(np.array_equal(x, y) for x, y in zip(seen, again, strict=True))
    other = stage_a_batches(monkeypatch, images, **{**config, "seed": 6})
    assert not all(np.array_equal(x, y) for x, y in zip(seen, other, strict=True))


# ----- --tie-inputs ----------------------------------------------------------------------------
def leaf_tables(model: PatchCircuit) -> torch.Tensor:
    """The input distributions of every sub-circuit's pixels, [n, C, P, levels, K]: entry
    (i, c, p) is pixel p of patch i under latent value c (virtual variable (i C + c) P + p)."""
    layer = model.parts.input_layer
    var = layer.entry_var
    assert torch.equal(torch.sort(var).values, torch.arange(model.num_groups * PATCH_PIXELS))
    table = layer.log_prob.detach()[layer.entry_row[torch.argsort(var)]]
    return table.view(model.num_patches, model.num_latents, PATCH_PIXELS, *table.shape[1:])


@pytest.mark.parametrize("flag", ["--tie-inputs", "--no-tie-inputs", None])
def test_tie_inputs_flag_decides_whether_the_trained_models_inputs_are_shared(
        tmp_path, monkeypatch, flag):
    """`hmmlvd image train --model lvd --tie-inputs`: in the saved model every latent value of
    a patch position has the same input distributions for each pixel (trained together); without
    the flag (the default, or --no-tie-inputs) each latent value has its own. Guards against
    the flag being dropped on its way to the model, which silently trains (and reports) an
    untied model with C times the input parameters."""
    import hmmlvd.pipelines.image as image_pipeline  # where image training loads its data

    images, _ = routed_images(40, 2, seed=2)

    def load_images(name, folder, *args, **kwargs):
        return ImageData(images, np.zeros(len(images), np.int64), images[:8],
                         np.zeros(8, np.int64), images[:8], np.zeros(8, np.int64))

    monkeypatch.setattr(image_pipeline, "load_images", load_images)
    out = tmp_path / "lvd"
    argv = ["image", "train", "--model", "lvd", "--size", "2", "--patch", str(PATCH),
            "--context", "1", "--num-latents", "2", "--top-units", "2", "--feature-dim", "2",
            "--stage-a-epochs", "1", "--stage-b-epochs", "1", "--epochs", "1",
            "--batch-size", "16", "--tree-bins", "4", "--device", "cpu", "--quiet",
            "--no-eval", "--data-dir", str(tmp_path / "unused"), "--out", str(out)]
    assert main(argv + ([flag] if flag else [])) == 0
    model = load_image_model(out)[0]
    assert isinstance(model, PatchCircuit)
    tables = leaf_tables(model)
    tied = flag == "--tie-inputs"
    assert model.config.tie_inputs is tied
    for c in range(1, model.num_latents):
        same = (tables[:, c] == tables[:, 0]).flatten(2).all(-1)  # [n, P]
        if tied:
            assert bool(same.all()), same
        else:
            assert not bool(same.any()), same


# ----- stage (c): the pseudocount --------------------------------------------------------------
@pytest.mark.parametrize("pseudocount, per", [(2.0, "batch"), (2.0, "data"), (0.0, "batch")])
def test_stage_c_adds_the_pseudocount_it_was_given_as_pseudocount_per_says(pseudocount, per):
    """N identical images, one latent value and K = 1 (each pixel an independent categorical):
    a stage-(c) M-step at step size 1 on a batch of B images sets each pixel's distribution to
    (B [x = v] + a') / (B + 256 a'), where a' = a per batch, or a B / N with
    pseudocount_per="data" (a prior over the training set). So the training image scores
    D log((B + a') / (B + 256 a')) and an image with one pixel changed swaps one term for
    log(a' / (B + 256 a')) (-inf without a pseudocount). Guards against stage (c) dropping its
    pseudocount or its meaning on the way from the pipeline's settings to the M-step."""
    num_images, batch = 20, 5
    pixels = np.arange(SIDE * SIDE, dtype=np.uint8) * 13 + 7  # distinct levels
    images = np.broadcast_to(pixels.reshape(1, SIDE, SIDE, 1), (num_images, SIDE, SIDE, 1))
    em = EMConfig(epochs=1, batch_size=batch, step_size=1.0, pseudocount=pseudocount,
                  pseudocount_per=per, final_full_batch=0)
    fields = dict(patch=PATCH, num_latents=1, top_units=1, feature_dim=2, context=0,
                  stage_a_epochs=1, stage_b_epochs=1)
    model = train_image_model("lvd", images.copy(), 1, em, lvd_fields=fields,
                              progress=False).model
    a = pseudocount * (batch / num_images if per == "data" else 1.0)
    seen = np.log((batch + a) / (batch + LEVELS * a))
    unseen = np.log(a / (batch + LEVELS * a)) if a else -np.inf
    changed = pixels.astype(np.int64).copy()
    changed[3] += 1
    x = torch.as_tensor(np.stack([pixels.astype(np.int64), changed]))
    got = model.log_likelihood(x).double().numpy()
    expected = [SIDE * SIDE * seen, (SIDE * SIDE - 1) * seen + unseen]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
