"""scripts/mutation.py: every family names files that exist, its generated mutmut table
parses with the family's settings, and mutant names map to their modules."""

from __future__ import annotations

import glob

from script_loading import load_script


def test_families_name_existing_files(monkeypatch):
    script = load_script("mutation", monkeypatch)
    for family, (mutate, tests) in script.FAMILIES.items():
        for pattern in mutate + script.EXCLUDE.get(family, []):
            assert glob.glob(str(script.ROOT / pattern)), (family, pattern)
        for test in tests:
            assert (script.ROOT / test).is_file(), (family, test)


def test_prepare_writes_the_family_table(monkeypatch, tmp_path):
    script = load_script("mutation", monkeypatch)
    monkeypatch.setattr(script, "WORK", tmp_path)
    folder = script.prepare("hmm")
    table = script.tomllib.loads((folder / "pyproject.toml").read_text())
    mutate, tests = script.FAMILIES["hmm"]
    assert table["tool"]["mutmut"]["only_mutate"] == mutate
    assert table["tool"]["mutmut"]["do_not_mutate"] == ["hmmlvd/hmm/em.py"]
    assert table["tool"]["mutmut"]["pytest_add_cli_args_test_selection"] == tests
    assert table["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert (folder / "hmmlvd").resolve() == script.ROOT / "hmmlvd"
    assert script.prepare("hmm") == folder  # a second call reuses the folder


def test_module_of_mutant_names(monkeypatch):
    script = load_script("mutation", monkeypatch)
    assert script.module_of("hmmlvd.hmm.em.xǁScaledEmissionǁupdate__mutmut_3") == \
        "hmmlvd.hmm.em"
    assert script.module_of("hmmlvd.em.rule.x__target__mutmut_23") == "hmmlvd.em.rule"
    assert script.module_of("hmmlvd.x.y.x_f__mutmut_1") == "hmmlvd.x.y"


def test_subprocess_runs_each_unkilled_mutant_with_it_switched_on_in_children(monkeypatch,
                                                                            tmp_path):
    """--subprocess: each mutant of a listed module that mutmut did not kill runs the module's
    tests once with MUTANT_UNDER_TEST naming it and the mutated copy first on PYTHONPATH (what
    a torchrun child inherits); a failing test is a kill; recorded results are not rerun."""
    script = load_script("mutation", monkeypatch)
    folder = tmp_path / "family"
    (folder / "mutants" / "tests").mkdir(parents=True)
    (folder / "mutants" / "tests" / "test_child.py").write_text(
        "import os, subprocess, sys\n"
        "def test_child_sees_no_killing_mutant():\n"
        "    out = subprocess.run([sys.executable, '-c', 'import os, sys; print("
        "os.environ[\"MUTANT_UNDER_TEST\"], sys.path[1])'], capture_output=True, text=True,\n"
        "                         env=os.environ).stdout.split()\n"
        "    assert out[1] == os.environ['PYTHONPATH']\n"
        "    assert not out[0].endswith('_mutmut_2')\n")
    monkeypatch.setattr(script, "SUBPROCESS_TESTS", {"fam": {"pkg.mod": ["tests/test_child.py"]}})
    statuses = {"pkg.mod.x_f__mutmut_1": "survived", "pkg.mod.x_f__mutmut_2": "no tests",
                "pkg.mod.x_f__mutmut_3": "killed", "pkg.other.x_g__mutmut_1": "survived"}
    script.run_subprocess_tests("fam", folder, statuses)
    assert script.subprocess_results(folder) == {"pkg.mod.x_f__mutmut_1": "survived",
                                                 "pkg.mod.x_f__mutmut_2": "killed"}
    calls = []
    monkeypatch.setattr(script.subprocess, "run", lambda *a, **k: calls.append(a))
    script.run_subprocess_tests("fam", folder, statuses)  # both recorded: nothing reruns
    assert calls == []


def test_retest_takes_survivors_timeouts_and_mutants_no_test_reached(monkeypatch):
    script = load_script("mutation", monkeypatch)
    statuses = {"m.x_f__mutmut_1": "killed", "m.x_f__mutmut_2": "survived",
                "m.x_f__mutmut_3": "no tests", "m.x_f__mutmut_4": "timeout",
                "m.x_f__mutmut_5": "not checked", "m.x_f__mutmut_6": "suspicious"}
    assert script.to_retest(statuses) == ["m.x_f__mutmut_2", "m.x_f__mutmut_3",
                                          "m.x_f__mutmut_4"]


def test_untriaged_lists_the_survivors_the_family_section_does_not_name(monkeypatch):
    """Rows name mutants by the shortest unambiguous function name, lists and ranges; a short
    name shared by two functions resolves to the one nearest the cell's previous name. Only
    the family's own section counts, and only survivors and mutants no test reached."""
    script = load_script("mutation", monkeypatch)
    doc = "\n".join([
        "## Mutation testing", "| `train.A.e_step` 9 | other family's text |",
        "### Family `hmm` (files)", "text `train.A.e_step` 8 outside a table",
        "| mutant | what | why |", "|---|---|---|",
        "| `train.A.m_step` 2; `e_step` 3-5, 7 | x | y |",
        "| `model.HMM.to` 1 | x | `model.HMM.to` 2 (not the first cell) |",
        "| `fit` 1; `nowhere` 4 | x | y |",
        "### Family `em`", "| `train.A.e_step` 6 | x | y |"])
    names = {f"hmmlvd.hmm.train.xǁAǁe_step__mutmut_{n}": "survived" for n in range(1, 10)}
    names.update({"hmmlvd.hmm.train.xǁBǁe_step__mutmut_1": "no tests",
                  "hmmlvd.hmm.train.xǁAǁm_step__mutmut_2": "survived",
                  "hmmlvd.hmm.model.xǁHMMǁto__mutmut_1": "survived",
                  "hmmlvd.hmm.model.xǁHMMǁto__mutmut_2": "survived",
                  "hmmlvd.hmm.model.xǁHMMǁfit__mutmut_1": "no tests",
                  "hmmlvd.hmm.model.x_fit__mutmut_1": "killed",
                  "hmmlvd.hmm.model.x_helper__mutmut_1": "timeout"})
    assert script.function_of("hmmlvd.hmm.model.xǁHMMǁto__mutmut_2") == ("hmm.model.HMM.to", 2)
    assert script.function_of("hmmlvd.em.rule.x__target__mutmut_23") == ("em.rule._target", 23)
    left, unknown = script.untriaged(names, doc, "hmm")
    assert left == sorted([
        *(f"hmmlvd.hmm.train.xǁAǁe_step__mutmut_{n}" for n in (1, 2, 6, 8, 9)),
        "hmmlvd.hmm.train.xǁBǁe_step__mutmut_1", "hmmlvd.hmm.model.xǁHMMǁto__mutmut_2",
        "hmmlvd.hmm.model.xǁHMMǁfit__mutmut_1"])
    # `fit` matches model.HMM.fit and model.fit with no previous name: ambiguous
    assert unknown == ["fit", "nowhere"]
