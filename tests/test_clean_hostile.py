"""Bad inputs to ``deepstart clean`` (issue 23): a read-only folder, files gone since the
ranking, a move failing midway, two cleans of one folder at once, a plan or an undo log of
another folder, a plan reaching outside the folder or emptying a class. Each ends in one line
(or a one-line note per file) and no file is lost: every image is still in the folder or in
``<folder>-removed``, and an undo log says where.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepstart.cli import main
from deepstart.errors import DeepstartError
from deepstart.run import clean_plan
from deepstart.run.clean import apply_run_plan, undo_run
from tests.test_clean import copy_of, make_folder, train_on, write_plan


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        info = make_folder(tmp / "bars")
        run_dir = train_on(tmp / "bars", tmp / "runs", "--epochs", "1")
    return {**info, "folder": tmp / "bars", "run": run_dir}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder and beside it in -removed, by its bytes."""
    found = {}
    for top in (folder, clean_plan.removed_dir(folder)):
        for p in sorted(top.rglob("*.png")) if top.exists() else []:
            found[p.relative_to(top).as_posix()] = p.read_bytes()
    return found


def fails_in_one_line(capsys, argv, *expected) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deepstart: error: ") and "\n" not in err, err
    for text in expected:
        assert text in err, err
    return err


def two_moves(planted, folder: Path) -> list[dict]:
    (bad, true), *_ = planted["flipped"].items()
    return [
        {"file": bad, "action": "relabel", "to": true},
        {"file": planted["copy"][1], "action": "delete"},
    ]


def test_a_read_only_folder_is_refused_before_any_move(planted, tmp_path, capsys, monkeypatch):
    folder = copy_of(planted, tmp_path)
    plan = write_plan(tmp_path / "p.json", folder, two_moves(planted, folder))
    before = snapshot(folder)
    # root may write anywhere, so the check os.access makes is what is tested
    real = os.access
    monkeypatch.setattr(
        clean_plan.os, "access", lambda p, m: False if "class" in str(p) else real(p, m)
    )
    run = str(planted["run"])
    fails_in_one_line(
        capsys, ["clean", run, "--data", str(folder), "--apply", str(plan)], "read-only"
    )
    assert snapshot(folder) == before and not list(folder.glob(".deepstart-clean.lock"))


def test_a_folder_that_refuses_the_lock_file_is_refused(planted, tmp_path, capsys, monkeypatch):
    folder = copy_of(planted, tmp_path)
    plan = write_plan(tmp_path / "p.json", folder, two_moves(planted, folder))
    real = os.open

    def read_only_fs(path, flags, *args):
        if str(path).endswith(clean_plan.LOCK):
            raise OSError(30, "Read-only file system", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(clean_plan.os, "open", read_only_fs)
    before = snapshot(folder)
    run = str(planted["run"])
    argv = ["clean", run, "--data", str(folder), "--apply", str(plan)]
    fails_in_one_line(capsys, argv, "Read-only file system", "nothing was moved")
    assert snapshot(folder) == before


def test_a_move_failing_midway_puts_the_earlier_ones_back(planted, tmp_path, monkeypatch):
    folder = copy_of(planted, tmp_path)
    plan = write_plan(tmp_path / "p.json", folder, two_moves(planted, folder))
    before = snapshot(folder)
    real, calls = shutil.move, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied", src)
        return real(src, dst)

    monkeypatch.setattr(clean_plan.shutil, "move", second_fails)
    with pytest.raises(DeepstartError, match="put back: nothing changed") as e:
        apply_run_plan(planted["run"], plan, data_dir=str(folder), log=lambda m: None)
    assert "\n" not in str(e.value)
    assert snapshot(folder) == before
    assert not list(clean_plan.removed_dir(folder).glob("undo-*.json"))


def test_files_gone_since_the_ranking_are_skipped_one_line_each(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    moves = two_moves(planted, folder)
    (folder / moves[0]["file"]).unlink()  # vanished between the ranking and the apply
    plan = write_plan(tmp_path / "p.json", folder, moves)
    said = []
    undo = apply_run_plan(planted["run"], plan, data_dir=str(folder), log=said.append)
    assert f"  {moves[0]['file']}: gone since the ranking; skipped" in said
    assert (clean_plan.removed_dir(folder) / moves[1]["file"]).is_file()
    assert len(json.loads(undo.read_text())["moves"]) == 1


def test_a_second_clean_of_the_same_folder_waits_for_the_lock(planted, tmp_path, capsys):
    folder = copy_of(planted, tmp_path)
    plan = write_plan(tmp_path / "p.json", folder, two_moves(planted, folder))
    before = snapshot(folder)
    run = str(planted["run"])
    apply = ["clean", run, "--data", str(folder), "--apply", str(plan)]
    undo = ["clean", run, "--data", str(folder), "--undo"]
    with clean_plan.folder_lock(folder.resolve()):  # another clean is at work
        fails_in_one_line(capsys, apply, "another deepstart clean", f"pid {os.getpid()}")
    assert snapshot(folder) == before
    assert main(apply) == 0  # the lock went with the other clean
    after = snapshot(folder)
    with clean_plan.folder_lock(folder.resolve()):
        fails_in_one_line(capsys, undo, "another deepstart clean")
    assert snapshot(folder) == after
    assert main(undo) == 0 and snapshot(folder) == before


def test_an_undo_log_or_plan_of_another_folder_is_refused(planted, tmp_path, capsys):
    one = copy_of(planted, tmp_path / "a")
    other = Path(shutil.copytree(one, tmp_path / "other"))
    plan = write_plan(tmp_path / "p.json", other, two_moves(planted, other))
    run = str(planted["run"])
    fails_in_one_line(
        capsys, ["clean", run, "--data", str(one), "--apply", str(plan)], "this plan is for"
    )
    assert main(["clean", run, "--data", str(other), "--apply", str(plan)]) == 0
    (log,) = clean_plan.removed_dir(other).glob("undo-*.json")
    before = snapshot(one)
    argv = ["clean", run, "--data", str(one), "--undo", str(log)]
    fails_in_one_line(capsys, argv, "is the undo log of", str(other.resolve()))
    assert snapshot(one) == before
    assert main(["clean", run, "--data", str(other), "--undo", str(log)]) == 0
    fails_in_one_line(
        capsys, ["clean", run, "--data", str(other), "--undo", str(log)], "already undone"
    )
    fails_in_one_line(capsys, ["clean", run, "--data", str(other), "--undo"], "no undo log")


@pytest.mark.parametrize(
    "action, says",
    [
        ({"file": "../outside.png", "action": "delete"}, "not a file inside the folder"),
        ({"file": "train/class0/00000.png", "action": "burn"}, "unknown action"),
        ({"file": "train/class0/00000.png", "action": "relabel", "to": "cow"}, "no class"),
        ({"file": "test/class0/00000.png", "action": "relabel"}, "no class"),
    ],
)
def test_a_plan_that_would_damage_the_folder_is_refused(planted, tmp_path, capsys, action, says):
    folder = copy_of(planted, tmp_path)
    plan = write_plan(tmp_path / "p.json", folder, [action])
    before = snapshot(folder)
    run = str(planted["run"])
    fails_in_one_line(capsys, ["clean", run, "--data", str(folder), "--apply", str(plan)], says)
    assert snapshot(folder) == before


def test_a_plan_emptying_a_class_folder_is_refused(planted, tmp_path, capsys):
    folder = copy_of(planted, tmp_path)
    files = sorted(p.relative_to(folder).as_posix() for p in (folder / "test/class2").iterdir())
    plan = write_plan(tmp_path / "p.json", folder, [{"file": f, "action": "delete"} for f in files])
    run = str(planted["run"])
    argv = ["clean", run, "--data", str(folder), "--apply", str(plan)]
    fails_in_one_line(capsys, argv, "empties the class folder test/class2")
    assert all((folder / f).is_file() for f in files)


def test_broken_plans_and_moved_folders_say_so_in_one_line(planted, tmp_path, capsys):
    run = str(planted["run"])
    (tmp_path / "junk.json").write_text("{not json")
    fails_in_one_line(capsys, ["clean", run, "--apply", str(tmp_path / "junk.json")], "not a")
    (tmp_path / "list.json").write_text("[]")
    fails_in_one_line(capsys, ["clean", run, "--apply", str(tmp_path / "list.json")], "not a")
    fails_in_one_line(capsys, ["clean", run, "--apply", str(tmp_path / "none.json")], "no such")
    gone = ["clean", run, "--data", str(tmp_path / "moved")]
    fails_in_one_line(capsys, [*gone, "--undo"], "is not there", "--data DIR")
    fails_in_one_line(capsys, ["clean", str(tmp_path)], "no config.json")
    fails_in_one_line(capsys, ["clean", run, "--top", "0"], "--top")
    fails_in_one_line(capsys, ["clean", run, "--splits", "train,bogus"], "no split 'bogus'")


def test_undo_skips_files_moved_again_since_one_line_each(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    moves = two_moves(planted, folder)
    plan = write_plan(tmp_path / "p.json", folder, moves)
    undo = apply_run_plan(planted["run"], plan, data_dir=str(folder), log=lambda m: None)
    deleted = clean_plan.removed_dir(folder) / moves[1]["file"]
    deleted.rename(tmp_path / "elsewhere.png")  # the user moved it on by hand
    said = []
    assert undo_run(planted["run"], undo, data_dir=str(folder), log=said.append) == 1
    assert f"  {deleted}: no longer there (moved or deleted since); skipped" in said
    assert (folder / moves[0]["file"]).is_file()
