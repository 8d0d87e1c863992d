"""``deepstart.seed_everything``: what makes a notebook or script repeat. ``Learner(seed=)``
seeds only its shuffles and augmentations; the initial weights and the dropout masks come
from torch's global generator, which torch seeds differently in every process."""

import subprocess
import sys

import torch

from deepstart import Learner, create_model, seed_everything


def _train_once(data):
    seed_everything(0)
    model = create_model("mlp", in_channels=data.channels, num_classes=data.num_classes,
                         input_size=data.size, dropout=0.5)  # fmt: skip
    learn = Learner(data, model, batch_size=32, quiet=True, seed=0)
    learn.fit_one_cycle(1, 1e-2)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_fit_after_seed_everything_repeats_exactly(toy_data):
    first, again = _train_once(toy_data), _train_once(toy_data)
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_two_processes_seeded_alike_draw_the_same_initial_weights():
    """What the examples rely on: torch 2.13 seeds its global generator differently in every
    process, so a fresh kernel draws other weights unless seed_everything came first."""
    code = "import deepstart, torch; deepstart.seed_everything(0); "
    code += "print(torch.nn.Linear(4, 1).weight.sum().item(), torch.initial_seed())"
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.split()[1] == "0"
