"""The configs the commands build check their own settings, so a Python caller gets the same
refusal as a command-line user: the message names the flag first and the config field after
it. (The command line's one-line errors for these flags: tests/test_reliability_inputs.py.)"""

from __future__ import annotations

import pytest

from hmmlvd.core.errors import DataError
from hmmlvd.em.config import EMConfig
from hmmlvd.lvd.text.distill import LVDSettings
from hmmlvd.pipelines.text import EvalSettings


@pytest.mark.parametrize(("make", "flag", "field"), [
    (lambda: EvalSettings(batch_size=0), "--eval-batch-size", "EvalSettings.batch_size"),
    (lambda: EvalSettings(max_tokens=-7), "--max-eval-tokens", "EvalSettings.max_tokens"),
    (lambda: LVDSettings(embed_batch_size=0), "--embed-batch-size",
     "LVDSettings.embed_batch_size"),
    (lambda: LVDSettings(kmeans_iters=0), "--kmeans-iters", "LVDSettings.kmeans_iters"),
    (lambda: LVDSettings(kmeans_sample=-5), "--kmeans-sample", "LVDSettings.kmeans_sample"),
])
def test_counts_below_their_minimum_are_refused_naming_flag_and_field(make, flag, field):
    with pytest.raises(DataError) as refused:
        make()
    assert str(refused.value).startswith(f"{flag} must be >= ") and field in str(refused.value)


def test_the_smallest_counts_and_none_are_accepted():
    assert EvalSettings(batch_size=1, max_tokens=1).max_tokens == 1
    assert EvalSettings(max_tokens=None).max_tokens is None
    assert LVDSettings(embed_batch_size=1, kmeans_iters=1, kmeans_sample=1).kmeans_sample == 1


@pytest.mark.parametrize("seed", [-1, 2**63, 10**23])
def test_seeds_outside_the_generators_range_are_refused(seed):
    with pytest.raises(DataError, match=r"seed must lie in \[0, 2\*\*63\)"):
        EMConfig(seed=seed)
    assert EMConfig(seed=2**63 - 1).seed == 2**63 - 1
