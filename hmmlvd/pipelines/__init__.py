"""Pipelines: what a command does, from a config object to a run folder, callable from the
command line, scripts and the Python API alike. :mod:`~hmmlvd.pipelines.text`: training an
HMM on WikiText-2 (random init, a saved model or LVD) and evaluating it beside the n-gram
baselines; :mod:`~hmmlvd.pipelines.image`: training an image circuit into a run folder (on the
model building and saving of :mod:`hmmlvd.pipelines.image_models`)."""

from hmmlvd.pipelines.text import EvalSettings, TextTraining, evaluate_model, train_text

__all__ = ["EvalSettings", "TextTraining", "evaluate_model", "train_text"]
