"""The C allocator's thresholds during a CPU fit (deepstart.train.host_memory).

The effect is counted, not timed: the page faults of allocating and freeing a 40 MB tensor,
which glibc maps afresh every time by default and keeps in its heap once a fit has started.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from deepstart.train import host_memory

glibc_only = pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's malloc only")

FAULTS = """
import resource, torch

def faults_of_big_tensors(n=20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(10_000_000).sum()  # 40 MB, written then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


@glibc_only
def test_after_a_cpu_fit_freed_blocks_are_reused_not_mapped_afresh():
    script = FAULTS + textwrap.dedent(
        """
        from deepstart.data.dataset import ImageSet, make_dataset
        from deepstart.models.registry import create_model
        from deepstart.train.learner import Learner

        faults_of_big_tensors()  # warm
        before = faults_of_big_tensors()
        images = torch.randint(0, 255, (80, 1, 16, 16), dtype=torch.uint8)
        labels = torch.arange(80) % 3
        train = ImageSet(images[:64], labels[:64], ["a", "b", "c"])
        test = ImageSet(images[64:], labels[64:], ["a", "b", "c"])
        data = make_dataset("noise", train, test, valid_pct=0.25, seed=0)
        model = create_model("logreg", in_channels=1, num_classes=3, input_size=(16, 16))
        Learner(data, model, batch_size=16, device="cpu", log=lambda m: None).fit(1, 1e-3)
        faults_of_big_tensors()  # the heap grows to hold the block, once
        print(before, faults_of_big_tensors())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    before, after = (int(v) for v in out.stdout.split()[-2:])  # after the epoch lines
    # 20 x 40 MB mapped afresh is ~200,000 faults of 4 KiB pages; kept, next to none.
    assert before > 20 * 5_000, before
    assert after < 1_000, after


@glibc_only
def test_the_users_own_thresholds_stand(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "_glibc", lambda: type("C", (), {"mallopt": calls.append}))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert host_memory.keep_freed_memory.__wrapped__() is False
    assert calls == []


def test_off_glibc_both_are_no_ops(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_memory.__wrapped__() is False
    host_memory.give_back_memory()  # nothing to call, nothing raised
