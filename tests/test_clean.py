"""Fixing the data from what the model says (issue 23): the look-alike hash, the ranking, the
files behind it, ``deepstart clean`` with its plan, undo log and the decode cache noticing.

Bad inputs (read-only folders, vanished files, a held lock, foreign logs): test_clean_hostile.py;
the pages in headless Chromium: test_clean_pages.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.cli import main
from deepstart.data.dataset import ImageSet
from deepstart.data.folder import load_folder, write_folder
from deepstart.interpret.analysis import Interpretation
from deepstart.interpret.duplicates import duplicate_groups, hamming, perceptual_hash
from deepstart.run.clean import rank_run
from deepstart.run.clean_plan import removed_dir
from tests.conftest import bars

FLIPPED = 12  # training labels flipped on purpose, of 240
K = 3


def make_folder(root: Path) -> dict:
    """``root/{train,test}/class<c>/*.png`` of learnable bars, with ``FLIPPED`` training
    files put in the wrong class folder, one identical copy filed under another class and
    one near-identical copy (brighter by 3 levels) under its own. Six test files are in the
    wrong folder too (the report then has mistakes to click). Returns what was planted."""
    train, test = bars(240, seed=0), bars(60, seed=1)
    test.labels[:6] = (test.labels[:6] + 1) % K
    write_folder(test, root, "test")
    gen = torch.Generator().manual_seed(0)
    flip = torch.randperm(len(train), generator=gen)[:FLIPPED]
    wrong = train.labels.clone()
    wrong[flip] = (wrong[flip] + 1 + torch.randint(0, K - 1, (FLIPPED,), generator=gen)) % K
    write_folder(ImageSet(train.images, wrong, train.classes), root, "train")
    # write_folder numbers files per class in item order: item i's file is its rank there
    files, seen = [], [0] * K
    for c in wrong.tolist():
        files.append(f"train/class{c}/{seen[c]:05d}.png")
        seen[c] += 1
    flipped = {files[i]: train.classes[int(train.labels[i])] for i in flip.tolist()}
    first = np.array(Image.open(root / files[0]))
    other = (int(wrong[0]) + 1) % K
    Image.fromarray(first).save(root / f"train/class{other}/copy.png")
    Image.fromarray(np.clip(first.astype(int) + 3, 0, 255).astype(np.uint8)).save(
        root / f"train/class{int(wrong[0])}/near.png"
    )
    return {"flipped": flipped, "copy": [files[0], f"train/class{other}/copy.png"]}


def train_on(folder: Path, out: Path, *extra: str) -> Path:
    argv = ["train", "--data", "folder", "--data-dir", str(folder), "--model", "mlp"]
    argv += ["--epochs", "4", "--batch-size", "32", "--lr", "3e-3", "--out", str(out)]
    assert main([*argv, "--progress", "plain", "--no-report", *extra]) == 0
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A folder with planted mistakes and a short run on it (its own cache)."""
    tmp = tmp_path_factory.mktemp("clean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPSTART_CACHE", str(tmp / "cache"))
        info = make_folder(tmp / "bars")
        run_dir = train_on(tmp / "bars", tmp / "runs")
    return {**info, "folder": tmp / "bars", "run": run_dir}


def copy_of(planted, tmp_path) -> Path:
    """A copy of the planted folder to change (the run is pointed at it with data_dir)."""
    return Path(shutil.copytree(planted["folder"], tmp_path / "bars"))


def write_plan(path: Path, root: Path, actions: list[dict]) -> Path:
    plan = {"deepstart": "clean-plan", "version": 1, "root": str(root.resolve())}
    path.write_text(json.dumps({**plan, "actions": actions}))
    return path


# -- the hash -----------------------------------------------------------------------------------
def _photo(seed: int, side: int = 48) -> np.ndarray:
    """A smooth random colour picture (low frequencies, like a photo at thumbnail size)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 6, 6, generator=g)
    big = torch.nn.functional.interpolate(small, size=(side, side), mode="bicubic")
    return (big.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _nchw(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_hash_survives_resizing_and_jpeg_and_tells_pictures_apart():
    a = _photo(0)
    buf = io.BytesIO()
    Image.fromarray(a).resize((64, 64)).save(buf, format="JPEG", quality=75)
    copy = np.array(Image.open(buf).resize((48, 48)))
    h = perceptual_hash(_nchw(a, copy, *(_photo(s) for s in range(1, 9))))
    d = hamming(h, h)
    assert d[0, 1] <= 3  # the re-encoded copy
    assert d[0, 2:].min() > 10 and (d[2:, 2:] + 64 * np.eye(8, dtype=int)).min() > 10


def test_duplicate_groups_join_identical_and_near_copies_only():
    pictures = [_photo(s) for s in range(20)]
    pictures.append(pictures[3].copy())  # 20: identical to 3
    pictures.append(np.clip(pictures[7].astype(int) + 4, 0, 255).astype(np.uint8))  # 21 ~ 7
    groups = duplicate_groups(_nchw(*pictures))
    assert groups == [[3, 20], [7, 21]]
    assert duplicate_groups(_nchw(pictures[0])) == []


# -- the ranking --------------------------------------------------------------------------------
def test_suspects_rank_by_loss_and_flag_look_alikes_whose_labels_disagree():
    images = _nchw(*(_photo(s) for s in range(6)))
    images[5] = images[0]  # the same picture, labelled differently below
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.99, 0.01], [0.9, 0.1]])
    sus = Interpretation(ImageSet(images, labels, ["cat", "dog"]), probs, "valid").suspects()
    assert [r["index"] for r in sus.rows()] == [5, 2, 3, 1, 0, 4]  # loss: -log p(label)
    top = sus.rows(1)[0]
    assert top["label"] == "dog" and top["pred"] == "cat" and top["name"] == "valid[5]"
    assert top["loss"] == pytest.approx(-np.log(0.1), rel=1e-5)
    (dup,) = sus.duplicates()
    assert [sus.row(r)["index"] for r in dup["rows"]] == [5, 0]
    assert dup["identical"] and dup["labels_disagree"]
    page = sus._repr_html_()  # a notebook's table, pictures inline
    assert page.count("<img") == 6 and "labels disagree" in page and "valid[5]" in page


def test_folder_items_know_their_files_and_the_cache_keeps_them(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    first = load_folder(folder, quiet=True)
    again = load_folder(folder, quiet=True)
    assert not first.from_cache and again.from_cache
    for fd in (first, again):
        assert fd.files == first.files
        for split in ("train", "test"):
            images, files = getattr(fd, split), fd.files[split]
            assert len(files) == len(images)
            for i in (0, len(files) // 2, len(files) - 1):
                assert files[i].split("/")[1] == fd.classes[int(images.labels[i])]
                pixels = np.array(Image.open(folder / files[i]))
                assert np.array_equal(pixels, images.images[i, 0].numpy())


def test_the_ranking_finds_the_flipped_labels_and_the_copy(planted):
    ranked = rank_run(planted["run"], data_dir=str(planted["folder"]), log=lambda m: None)
    sus = ranked.suspects
    assert len(sus) == 240 + 2 and set(sus.split) == {"train", "valid"}
    assert ranked.editable and ranked.root == planted["folder"].resolve()
    assert all(f is not None for f in ranked.files)  # every item tied to its file
    top = set(ranked.files[: 2 * FLIPPED])
    assert len(top & set(planted["flipped"])) >= FLIPPED * 3 // 4
    groups = [{ranked.files[r] for r in d["rows"]} for d in sus.duplicates()]
    assert any(set(planted["copy"]) <= g for g in groups)
    copy = next(d for d in sus.duplicates() if set(planted["copy"]) <= groups[d["group"]])
    assert copy["labels_disagree"]


def test_clean_command_writes_the_page_and_the_table(planted, capsys):
    run = planted["run"]
    assert main(["clean", str(run), "--top", "30", "--data", str(planted["folder"])]) == 0
    out = capsys.readouterr().out
    assert "clean.html" in out and "--apply clean-plan.json" in out
    table = json.loads((run / "suspects.json").read_text())
    assert table["editable"] and table["n"] == 242 and len(table["top"]) == 30
    assert table["top"][0]["file"] and table["top"][0]["loss"] >= table["top"][1]["loss"]
    page = (run / "clean.html").read_text()
    assert "Export plan" in page and "clean-data" in page and "<script src" not in page


# -- applying a plan, undoing it, and the cache -------------------------------------------------
def test_apply_moves_files_and_undo_puts_them_back_and_training_sees_each(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    before = load_folder(folder, quiet=True)
    (bad, true), *_ = planted["flipped"].items()
    plan = write_plan(
        tmp_path / "plan.json",
        folder,
        [
            {"file": bad, "action": "relabel", "to": true},
            {"file": planted["copy"][1], "action": "delete"},
            {"file": "train/class0/00001.png", "action": "keep"},
        ],
    )
    run = str(planted["run"])
    assert main(["clean", run, "--data", str(folder), "--apply", str(plan)]) == 0
    (log,) = removed_dir(folder).glob("undo-*.json")
    moves = {Path(m["from"]): Path(m["to"]) for m in json.loads(log.read_text())["moves"]}
    moved, gone = moves[folder / bad], moves[folder / planted["copy"][1]]
    # the same name (00007.png...) is taken in the new class: the move adds "-1"
    assert moved.parent == folder / "train" / true and moved.stem.startswith(Path(bad).stem)
    assert gone == removed_dir(folder) / planted["copy"][1]
    assert moved.is_file() and gone.is_file() and not (folder / bad).exists()
    assert not (folder / planted["copy"][1]).exists()

    after = load_folder(folder, quiet=True)  # the decode cache notices: decoded afresh
    assert not after.from_cache and len(after.train) == len(before.train) - 1
    i = after.files["train"].index(moved.relative_to(folder).as_posix())
    assert after.classes[int(after.train.labels[i])] == true

    assert main(["clean", run, "--data", str(folder), "--undo"]) == 0
    assert (folder / bad).is_file() and (folder / planted["copy"][1]).is_file()
    assert not moved.exists() and not gone.exists()
    assert json.loads(log.read_text())["undone"]
    restored = load_folder(folder, quiet=True)  # the first listing again: its cache entry
    assert restored.from_cache and restored.files == before.files
    assert torch.equal(restored.train.labels, before.train.labels)


def test_a_name_taken_in_the_new_class_gets_a_suffix(planted, tmp_path):
    folder = copy_of(planted, tmp_path)
    src = "train/class0/00000.png"  # class1/00000.png exists too
    act = {"file": src, "action": "relabel", "to": "class1"}
    plan = write_plan(tmp_path / "p.json", folder, [act])
    run = str(planted["run"])
    assert main(["clean", run, "--data", str(folder), "--apply", str(plan)]) == 0
    assert (folder / "train/class1/00000-1.png").is_file()
    assert (folder / "train/class1/00000.png").is_file()


def test_builtin_data_gets_indices_and_no_plan(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["train", "--data", "shapes", "--data-opt", "n_train=150", "--data-opt", "n_test=30"]
    argv += ["--size", "16", "--model", "mlp", "--epochs", "1", "--out", str(out)]
    assert main([*argv, "--progress", "plain", "--no-report"]) == 0
    (run,) = out.iterdir()
    assert main(["clean", str(run), "--top", "5"]) == 0
    table = json.loads((run / "suspects.json").read_text())
    assert not table["editable"] and table["root"] is None
    # numbered as the dataset numbers them: the source's train split, valid held out of it
    assert all(r["name"].startswith("train[") for r in table["top"])
    capsys.readouterr()
    plan = write_plan(tmp_path / "p.json", tmp_path, [])
    assert main(["clean", str(run), "--apply", str(plan)]) == 2
    err = capsys.readouterr().err.strip()
    assert "built-in dataset" in err and "suspects.json" in err and "\n" not in err


def test_undo_removes_a_class_folder_the_apply_created(tmp_path):
    from deepstart.run.clean_plan import apply_plan, undo_clean

    root = tmp_path / "tree"
    for rel in ("train/a/0.png", "train/b/0.png", "valid/a/0.png", "valid/a/1.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), len(rel)).save(root / rel)
    plan = {"deepstart": "clean-plan", "root": str(root.resolve())}
    plan["actions"] = [{"file": "valid/a/1.png", "action": "relabel", "to": "b"}]
    undo = apply_plan(plan, root, root, log=lambda m: None)
    assert (root / "valid/b/1.png").is_file()
    assert load_folder(root, quiet=True).valid.class_counts() == [1, 1]
    assert undo_clean(undo, root, log=lambda m: None) == 1
    assert not (root / "valid/b").exists()  # else: "class folder valid/b is empty"
    assert load_folder(root, quiet=True).valid.class_counts() == [2, 0]
