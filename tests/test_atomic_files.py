"""Whole-or-nothing file writes: the target gets the full content, no temporary file stays, an
existing file is replaced only by a complete new one."""

import json

import pytest

from selfsup.tasks.atomic_files import (
    directory_written_atomically,
    write_json_atomically,
    write_text_atomically,
)


def test_json_lands_whole_in_a_new_directory_and_no_temporary_file_stays(tmp_path):
    path = write_json_atomically(tmp_path / "eval" / "results.json", {"b": 1, "a": [1.5, 2]},
                                 sort_keys=True)
    assert path == tmp_path / "eval" / "results.json"
    assert path.read_text() == '{\n  "a": [\n    1.5,\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads(path.read_text()) == {"a": [1.5, 2], "b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_an_existing_file_is_replaced_not_appended(tmp_path):
    path = tmp_path / "zoo.md"
    write_text_atomically(path, "old table, longer than the new one\n")
    write_text_atomically(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo.md"]


def test_a_directory_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "data" / "sample_set"
    with directory_written_atomically(target) as scratch:
        assert scratch.parent == target.parent and scratch.is_dir() and not target.exists()
        (scratch / "train").mkdir()
        (scratch / "train" / "a.txt").write_text("a")
    assert (target / "train" / "a.txt").read_text() == "a"
    assert [p.name for p in target.parent.iterdir()] == ["sample_set"]
    # A failure half-way leaves neither the target nor the scratch folder.
    failed = tmp_path / "data" / "failed_set"
    with pytest.raises(RuntimeError), directory_written_atomically(failed) as scratch:
        (scratch / "half.txt").write_text("half")
        raise RuntimeError("decoder crashed")
    assert sorted(p.name for p in failed.parent.iterdir()) == ["sample_set"]
    # Another process that finished first keeps its folder; ours is dropped without error.
    with directory_written_atomically(target) as scratch:
        (scratch / "train").mkdir()
        (scratch / "train" / "b.txt").write_text("b")
    assert sorted(p.name for p in (target / "train").iterdir()) == ["a.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["sample_set"]
