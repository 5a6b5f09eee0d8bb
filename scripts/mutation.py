"""Mutation testing of one module family with mutmut, outside CI: background-friendly and
resumable.

    nice -n 15 .venv/bin/python scripts/mutation.py hmm-em              # run or continue
    nice -n 15 .venv/bin/python scripts/mutation.py hmm-em --retest     # survivors, timeouts
    .venv/bin/python scripts/mutation.py hmm-em --report                # score only, no run
    .venv/bin/python scripts/mutation.py hmm-em --untriaged    # survivors docs/ do not name
    nice -n 15 .venv/bin/python scripts/mutation.py hmm --subprocess    # torchrun-only code
    .venv/bin/python scripts/mutation.py --list                         # the families

Each family gets its own work folder ``.mutmut/<family>/`` (git-ignored): a generated
``pyproject.toml`` holding that family's ``[tool.mutmut]`` table (which files to mutate, which
test files to run) and the repository's pytest settings, plus links to ``hmmlvd/`` and
``tests/``. mutmut copies both into ``.mutmut/<family>/mutants/``, mutates only the family's
files there, runs the family's test files once to learn which tests reach which function, then
runs only those tests per mutant, one mutant at a time. Results are kept per mutant in that
folder, so a stopped run continues where it stopped; mutants of a function whose source
changed are rerun. Survivors are not retried after a test is added: ``--retest`` does that
(and reruns the timeouts and the mutants no test reached).
Families never share state, so one family's settings cannot invalidate another's results.
The run ends by printing, per mutated module, mutants / killed / survived / score, and every
survivor; ``.venv/bin/mutmut show <name>`` inside the work folder prints a survivor's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from hmmlvd.core.atomic import atomic_write_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, where mutmut itself reads toml with this package
    import toml as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutmut"

# family -> (files to mutate, test files run for it). Only functions are mutated (mutmut 3),
# and per mutant only the tests that reached the mutated function run.
FAMILIES: dict[str, tuple[list[str], list[str]]] = {
    "hmm-em": (
        ["hmmlvd/hmm/em.py", "hmmlvd/em/rule.py"],
        ["tests/test_em.py", "tests/test_em_core.py", "tests/test_precision.py",
         "tests/test_scaled_emission.py", "tests/test_train.py", "tests/test_pc_em.py",
         "tests/test_leaf_prior.py"],
    ),
    "hmm": (
        ["hmmlvd/hmm/*.py"],
        ["tests/test_forward.py", "tests/test_model.py", "tests/test_queries.py",
         "tests/test_dfa.py", "tests/test_sample.py", "tests/test_init.py",
         "tests/test_hmm_early.py",
         "tests/test_memory.py", "tests/test_hmmlearn_parity.py", "tests/test_checkpoint.py",
         "tests/test_eval.py", "tests/test_train.py", "tests/test_verbs.py",
         "tests/test_numerics.py"],
    ),
    "em": (
        ["hmmlvd/em/*.py"],
        ["tests/test_em_core.py", "tests/test_em_resume.py", "tests/test_hmm_early.py",
         "tests/test_train.py", "tests/test_pc_em.py", "tests/test_leaf_prior.py",
         "tests/test_legacy_run_folders.py", "tests/test_checkpoint.py",
         "tests/test_pc_checkpoint.py", "tests/test_interrupt.py"],
    ),
    "persist": (
        ["hmmlvd/core/persist.py", "hmmlvd/core/lock.py", "hmmlvd/core/outdir.py",
         "hmmlvd/core/atomic.py"],
        ["tests/test_persist.py", "tests/test_run_folders.py", "tests/test_cache_entries.py",
         "tests/test_checkpoint.py", "tests/test_pc_checkpoint.py",
         "tests/test_stop_before_checkpoint.py", "tests/test_reliability_outputs.py",
         "tests/test_lvd_kill_resume.py"],
    ),
    "lvd-image": (  # distillation, the stage-(a) EM beside the patch circuit, the stages' order
        ["hmmlvd/lvd/image/*.py", "hmmlvd/image/parts_em.py", "hmmlvd/pipelines/image_lvd.py"],
        ["tests/test_lvd_image.py", "tests/test_lvd_image_stages.py",
         "tests/test_patch_features.py", "tests/test_patch_mae.py",
         "tests/test_image_memory.py", "tests/test_patch_circuit.py",
         "tests/test_image_training_config.py"],
    ),
}

# Modules whose functions run only in child processes (torchrun workers): mutmut maps tests to
# functions in the test process alone, so it never runs these tests for them. ``--subprocess``
# runs each such mutant's tests itself, with the mutant switched on in every child through the
# environment (mutmut's trampolines read MUTANT_UNDER_TEST) and the mutated copy first on
# PYTHONPATH. The tests run whole: the one torchrun launch they share is most of their time.
SUBPROCESS_TESTS: dict[str, dict[str, list[str]]] = {
    "hmm": {"hmmlvd.hmm.parallel": ["tests/test_distributed.py"]},
}
SUBPROCESS_RESULTS = "subprocess-results.json"
SUBPROCESS_TIMEOUT = 900  # seconds per mutant; a hang counts as killed (a timeout), as in mutmut

# The family's own files after the family's do_not_mutate: "hmm" leaves em.py to "hmm-em".
EXCLUDE = {"hmm": ["hmmlvd/hmm/em.py"], "em": ["hmmlvd/em/rule.py"]}

#: Where every survivor is triaged: one section per family, headed "### Family `<family>`",
#: whose table rows start with the mutants they cover (e.g. "| `model.HMM.to` 3, 5-7; `f` 2 |").
TRIAGE_DOC = ROOT / "docs" / "reliability.md"
#: One mutant group of a row's first cell: a function (dotted, as short as unambiguous) and
#: its mutant numbers (ranges allowed).
TRIAGED = re.compile(r"`([\w.]+)`((?:[ ,]+\d+(?:-\d+)?)+)")

# Counted as killed, as mutmut's own score does: a failing test or a timeout.
KILLED = {"killed", "timeout"}
RETEST = {"survived", "no tests", "timeout"}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def prepare(family: str) -> Path:
    """The family's work folder with its pyproject.toml and links (made or refreshed)."""
    mutate, tests = FAMILIES[family]
    folder = WORK / family
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("hmmlvd", "tests"):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    pytest_opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    settings = {
        "source_paths": ["hmmlvd"],
        "only_mutate": mutate,
        "do_not_mutate": EXCLUDE.get(family, []),
        "pytest_add_cli_args_test_selection": tests,
    }
    lines = ["[tool.mutmut]"] + [f"{key} = {_toml_list(value)}" for key, value in settings.items()]
    # torch is not fork-safe after it has run: workers come from a clean fork server
    lines += ['process_isolation = "forkserver"', "", "[tool.pytest.ini_options]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in pytest_opts["ini_options"].items()]
    text = "\n".join(lines) + "\n"
    config = folder / "pyproject.toml"
    if not config.exists() or config.read_text() != text:
        config.write_text(text)
    return folder


def one_thread_env(**extra: str) -> dict[str, str]:
    """This process's environment with one torch thread per test process, plus ``extra``."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)


def mutmut(folder: Path, *args: str, capture: bool = False) -> str:
    """Run ``mutmut args`` in ``folder`` (one torch thread per process, low priority)."""
    command = ["nice", "-n", "15", str(Path(sys.executable).with_name("mutmut")), *args]
    done = subprocess.run(command, cwd=folder, env=one_thread_env(), text=True, check=not capture,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def results(folder: Path) -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, no tests, ...)."""
    out = mutmut(folder, "results", "--all", "true", capture=True)
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            found[name] = status
    return found


def module_of(name: str) -> str:
    """``hmmlvd.hmm.em.xǁScaledEmissionǁupdate__mutmut_3`` -> ``hmmlvd.hmm.em``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def function_of(name: str) -> tuple[str, int]:
    """``hmmlvd.hmm.model.xǁHMMǁto__mutmut_3`` -> (``hmm.model.HMM.to``, 3)."""
    module = module_of(name)
    mangled, number = name[len(module) + 1:].rsplit("__mutmut_", 1)
    function = mangled[2:] if mangled.startswith("x_") else \
        mangled[1:].strip("ǁ").replace("ǁ", ".")
    return f"{module.removeprefix('hmmlvd.')}.{function}", int(number)


def family_section(doc: str, family: str) -> str:
    """The text of ``doc``'s "### Family `family`" section (empty when it has none)."""
    lines, inside, kept = doc.splitlines(), False, []
    for line in lines:
        if line.startswith(("### ", "## ")):
            inside = line.startswith(f"### Family `{family}`")
        elif inside:
            kept.append(line)
    return "\n".join(kept)


def _shared_parts(a: str, b: str) -> int:
    """How many leading dotted parts ``a`` and ``b`` share."""
    pairs = zip(a.split("."), b.split("."), strict=False)
    return next((i for i, (x, y) in enumerate(pairs) if x != y),
                min(a.count("."), b.count(".")) + 1)


def triaged(section: str, functions: set[str]) -> tuple[set[tuple[str, int]], list[str]]:
    """The (function, number) pairs the section's table rows name, and the names in them that
    match no function of ``functions`` or more than one. A short name (``e_step``) is the
    function whose dotted name ends with it; where several do, the one nearest the previous
    name of the same cell (``train._HMMLearner.m_step 2; e_step 41``)."""
    found: set[tuple[str, int]] = set()
    unknown: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        previous = ""
        for match in TRIAGED.finditer(line[1:].split("|", 1)[0]):
            short = match[1]
            candidates = sorted(f for f in functions if f == short or f.endswith("." + short))
            if len(candidates) > 1 and previous:
                shared = [_shared_parts(previous, c) for c in candidates]
                best = max(shared)
                candidates = [c for c, n in zip(candidates, shared, strict=True) if n == best]
            if len(candidates) != 1:
                unknown.append(short)
                continue
            previous = candidates[0]
            for part in re.findall(r"\d+(?:-\d+)?", match[2]):
                first, _, last = part.partition("-")
                found.update((previous, n) for n in range(int(first), int(last or first) + 1))
    return found, unknown


def untriaged(statuses: dict[str, str], doc: str, family: str) -> tuple[list[str], list[str]]:
    """The survivors and mutants no test reached that the family's section of ``doc`` does
    not name, and the names in it that match no function (see :func:`triaged`)."""
    functions = {function_of(name)[0] for name in statuses}
    done, unknown = triaged(family_section(doc, family), functions)
    left = sorted(n for n, s in statuses.items()
                  if s in ("survived", "no tests") and function_of(n) not in done)
    return left, unknown


def subprocess_results(folder: Path) -> dict[str, str]:
    """mutant name -> status of the mutants ``--subprocess`` ran (none yet: empty)."""
    path = folder / SUBPROCESS_RESULTS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_subprocess_tests(family: str, folder: Path, statuses: dict[str, str]) -> None:
    """Run the child-process tests of every not-yet-killed mutant of the family's
    :data:`SUBPROCESS_TESTS` modules, one mutant at a time, recording each result as it ends
    (a stopped run continues with the next unrecorded mutant)."""
    done = subprocess_results(folder)
    mutants = folder / "mutants"
    for module, tests in SUBPROCESS_TESTS.get(family, {}).items():
        todo = sorted(n for n, s in statuses.items()
                      if module_of(n) == module and s not in KILLED and n not in done)
        for i, name in enumerate(todo, 1):
            env = one_thread_env(MUTANT_UNDER_TEST=name, PYTHONPATH=str(mutants))
            command = ["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q",
                       "-p", "no:cacheprovider", *tests]
            try:
                code = subprocess.run(command, cwd=mutants, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL,
                                      timeout=SUBPROCESS_TIMEOUT).returncode
                status = "survived" if code == 0 else "killed" if code == 1 else f"error {code}"
            except subprocess.TimeoutExpired:
                status = "timeout"
            done[name] = status
            atomic_write_text(folder / SUBPROCESS_RESULTS, json.dumps(done, indent=1) + "\n")
            print(f"[{i}/{len(todo)}] {name}: {status}", flush=True)


def to_retest(statuses: dict[str, str]) -> list[str]:
    """The mutants ``--retest`` reruns: survivors (a test may have been added), those no test
    reached (mutmut maps tests added since its last run before it runs them) and timeouts (a
    mutant that ran out of time on a busy machine counts as killed, which it may not be)."""
    return sorted(n for n, s in statuses.items() if s in RETEST)


def merged(folder: Path) -> dict[str, str]:
    """mutmut's status per mutant, with ``--subprocess``'s result where it ran that mutant."""
    return {**results(folder), **subprocess_results(folder)}


def report(statuses: dict[str, str]) -> None:
    by_module: dict[str, Counter] = {}
    for name, status in statuses.items():
        by_module.setdefault(module_of(name), Counter())[status] += 1
    print(f"{'module':<24}{'mutants':>8}{'killed':>8}{'survived':>9}{'other':>7}{'score':>8}")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        other = total - killed - counts["survived"]
        print(f"{module:<24}{total:>8}{killed:>8}{counts['survived']:>9}{other:>7}"
              f"{100 * killed / max(total, 1):>7.1f}%")
    for status in sorted({s for s in statuses.values() if s not in KILLED}):
        names = sorted(n for n, s in statuses.items() if s == status)
        print(f"\n{status} ({len(names)}):")
        print("\n".join(f"  {name}" for name in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", nargs="?", choices=sorted(FAMILIES))
    parser.add_argument("--list", action="store_true", help="print the families and exit")
    parser.add_argument("--retest", action="store_true",
                        help="rerun the survivors, the timeouts and those no test reached")
    parser.add_argument("--report", action="store_true", help="print the score, run nothing")
    parser.add_argument("--subprocess", action="store_true",
                        help="run the child-process tests of the mutants mutmut cannot map "
                             "(SUBPROCESS_TESTS), after mutmut's own run of the family")
    parser.add_argument("--untriaged", action="store_true",
                        help="print the score and the survivors docs/reliability.md does not "
                             "triage, run nothing")
    args = parser.parse_args(argv)
    if args.list or not args.family:
        for family, (mutate, tests) in FAMILIES.items():
            print(f"{family}: mutates {' '.join(mutate)}; tests {' '.join(tests)}")
        return 0
    folder = prepare(args.family)
    if args.subprocess:
        run_subprocess_tests(args.family, folder, results(folder))
    elif not (args.report or args.untriaged):
        again = to_retest(results(folder)) if args.retest and (folder / "mutants").exists() \
            else []
        if args.retest and not again:
            print("no survivors to retest")
        elif args.retest:
            # twice: a run that finds new tests maps them, but (mutmut 3.8) still picks each
            # mutant's tests from the map it loaded first; the second run uses the new map
            mutmut(folder, "run", "--max-children", "1", *again)
            again = to_retest(results(folder))
            if again:
                mutmut(folder, "run", "--max-children", "1", *again)
        else:
            mutmut(folder, "run", "--max-children", "1")
    statuses = merged(folder)
    report(statuses)
    if args.untriaged:
        left, unknown = untriaged(statuses, TRIAGE_DOC.read_text(encoding="utf-8"), args.family)
        print(f"\nnot triaged in {TRIAGE_DOC.relative_to(ROOT)} ({len(left)}):")
        print("\n".join(f"  {name}" for name in left))
        if unknown:
            print(f"\nnames there that match no function or several: {', '.join(unknown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
