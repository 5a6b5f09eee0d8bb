"""Image models: the patch-latent circuit of image LVD (``patch_circuit``; the EM of its
sub-circuits alone on their own patches, ``parts_em``), the baseline
circuits HCLT, PD and RAT-SPN with documented structure choices (``baselines``), loading
whichever of them a saved folder holds (``loading``), and sample / inpainting grids (``grids``,
matplotlib imported only when drawing). The training pipeline that ``hmmlvd image`` runs is
:mod:`hmmlvd.pipelines.image_models`, above :mod:`hmmlvd.lvd`."""

from hmmlvd.image.baselines import BASELINES, StructureConfig, baseline_from_config, build_baseline
from hmmlvd.image.loading import load_pretrained
from hmmlvd.image.patch_circuit import (
    PatchCircuit,
    PatchCircuitConfig,
    load_patch_circuit,
    save_patch_circuit,
)

__all__ = ["BASELINES", "PatchCircuit", "PatchCircuitConfig", "StructureConfig",
           "baseline_from_config", "build_baseline", "load_patch_circuit", "load_pretrained",
           "save_patch_circuit"]
