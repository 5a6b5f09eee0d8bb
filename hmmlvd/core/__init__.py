"""The foundation every other layer stands on; it imports nothing of hmmlvd above it.

- :mod:`~hmmlvd.core.errors`: the exception types whose one-line messages the CLIs print.
- :mod:`~hmmlvd.core.validate`: argument checks that name the bad value and the fix.
- :mod:`~hmmlvd.core.atomic`: atomic file writes (temporary file, fsync, rename).
- :mod:`~hmmlvd.core.lock`, :mod:`~hmmlvd.core.outdir`: locks on output folders and cache
  entries, and the rules for reusing an output folder.
- :mod:`~hmmlvd.core.persist`: the one on-disk format of models, checkpoints and caches
  (safetensors + JSON, never pickle).
- :mod:`~hmmlvd.core.device`, :mod:`~hmmlvd.core.allocator`, :mod:`~hmmlvd.core.memory`: the
  device and compute dtype to use, allocator settings, and how much memory a device has.
- :mod:`~hmmlvd.core.provenance`, :mod:`~hmmlvd.core.report`: what produced a result, and
  writing results into markdown reports.
- :mod:`~hmmlvd.core.distributed`: the data-parallel primitives (rank, all-reduce, barrier).
"""
