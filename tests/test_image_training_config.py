"""ImageTraining, the config of `hmmlvd image train`, checks its settings when made (from the
command line or Python alike), naming each by its flag; the CLI only parses into it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hmmlvd.core.errors import DataError
from hmmlvd.image.baselines import StructureConfig
from hmmlvd.pc.em import CIRCUIT_EM
from hmmlvd.pipelines.image import ImageTraining
from hmmlvd.pipelines.image_models import lvd_config


def training(**changes) -> ImageTraining:
    return ImageTraining(**{"model": "lvd", "size": 2, "out": Path("unused"), **changes})


@pytest.mark.parametrize("changes, message", [
    ({"size": 0}, "--size must be >= 1, got 0"),
    ({"model": "gan"}, "--model must be one of lvd, hclt, pd, rat"),
    ({"dataset": "svhn"}, "--dataset must be one of mnist, cifar10"),
    ({"train_size": -1}, "--train-size must be >= 0"),
    ({"eval_size": -2}, "--eval-size must be >= 0"),
    ({"lvd": {"context": 29}}, "--context must be in [0, 28] (context: pixels around a patch; "
                               "mnist images are 28x28), got 29"),
    ({"lvd": {"context": 33}, "dataset": "cifar10"}, "--context must be in [0, 32]"),
    ({"lvd": {"num_latents": 0}}, "--num-latents must be >= 1"),
    ({"lvd": {"stage_b_epochs": -1}}, "--stage-b-epochs must be >= 0"),
    ({"lvd": {"sub_units": 3}}, "come from the shared size, EM and structure settings"),
    ({"lvd": {"stage_c_epochs": 3}}, "unknown image LVD settings ['stage_c_epochs']"),
    ({"model": "hclt", "lvd": {"num_latents": 4}}, "belong to --model lvd only"),
    ({"em": {"epochs": 2}}, "em must be an instance of EMConfig, got dict"),
])
def test_bad_settings_are_refused_naming_the_flag(changes, message):
    with pytest.raises(DataError) as info:
        training(**changes)
    assert message in str(info.value)


def test_tree_bins_beyond_the_grey_levels_are_refused_for_every_model():
    with pytest.raises(DataError, match=r"--tree-bins must be in \[2, 256\]"):
        StructureConfig(tree_bins=257)
    StructureConfig(tree_bins=256)


def test_lvd_settings_reach_their_configs():
    """The shared settings set K, the seed and the tree bins; the named ones the rest."""
    em = replace(CIRCUIT_EM, seed=7)
    distilled, stages = lvd_config(3, em, StructureConfig(tree_bins=5), num_latents=4,
                                   context=28, stage_a_epochs=1, stage_b_epochs=2)
    assert (distilled.sub_units, distilled.seed, distilled.tree_bins, distilled.num_latents,
            distilled.context) == (3, 7, 5, 4, 28)
    assert (stages.stage_a_epochs, stages.stage_b_epochs) == (1, 2)
    a, b = stages.stage_a(replace(em, patience=2, final_full_batch=3, pseudocount_per="data",
                                  leaf_prior="marginal")), stages.stage_b(em)
    assert (a.epochs, a.patience, a.final_full_batch, a.pseudocount_per, a.leaf_prior,
            a.seed) == (1, 0, 0, "batch", "marginal", 7)
    assert (b.epochs, b.leaf_prior) == (2, "uniform")
    training(lvd={"context": 28})  # as wide as the image: accepted
