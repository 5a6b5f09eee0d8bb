"""Marked sections of a results file are appended once and then replaced in place."""

from hmmlvd.core.report import write_section


def test_section_is_appended_then_replaced_in_place(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\nintro\n")
    write_section(path, "bench", "first")
    write_section(path, "other", "kept")
    write_section(path, "bench", "second")
    text = path.read_text()
    assert text.startswith("# Results\n\nintro\n")
    assert "first" not in text and text.count("<!-- bench:begin -->") == 1
    assert text.index("second") < text.index("kept")  # replaced where it stood


def test_section_in_a_new_file(tmp_path):
    path = tmp_path / "new.md"
    write_section(path, "s", "body")
    assert path.read_text() == "<!-- s:begin -->\nbody\n<!-- s:end -->\n"


def test_recorded_commands_name_paths_relative_to_the_clone():
    from hmmlvd.core.report import CLONE, clone_relative

    shared = CLONE.parent / "shared" / "data" / "mnist"
    inside = CLONE / "runs" / "x"
    command = f"python scripts/a.py --data-dir {shared} --out={inside} --other /etc/hosts 'a b'"
    assert clone_relative(command) == ("python scripts/a.py --data-dir ../shared/data/mnist "
                                       "--out=runs/x --other /etc/hosts 'a b'")
