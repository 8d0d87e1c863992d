"""The lr column of an epoch's row is the LR of its last step, also when a run is resumed
after that step (a Ctrl-C on an epoch's last batch): the resumed epoch then trains no batch,
and the optimizer holds the schedule's next LR. (test_resume's Ctrl-C test hit this when its
signal happened to land on an epoch's last batch.)"""

from deepstart import Learner, create_model, seed_everything
from deepstart.train.callbacks import Callback
from deepstart.train.events import CancelFit


def _learner(data):
    seed_everything(0)
    model = create_model("mlp", in_channels=data.channels, num_classes=data.num_classes,
                         input_size=data.size)  # fmt: skip
    return Learner(data, model, batch_size=32, quiet=True, guard=False, sanity=False)


class StopAfterEpochsLastBatch(Callback):
    order = 100  # after the Recorder has the batch, as Ctrl-C stops after a whole batch

    def after_batch(self):
        learn = self.learn
        if learn.training and learn.epoch == 0 and learn.iter == learn.n_iter - 1:
            raise CancelFit


def test_an_epoch_resumed_after_its_last_batch_logs_that_batchs_lr(toy_data):
    ref = _learner(toy_data)
    ref.fit_one_cycle(2, 1e-2)
    learn = _learner(toy_data)
    stop = StopAfterEpochsLastBatch()
    learn.fit_one_cycle(2, 1e-2, callbacks=[stop])
    n = learn.n_iter
    assert learn.recorder.history == []  # stopped before epoch 1 ended
    learn.fit_one_cycle(2, 1e-2, start_epoch=0, restart_at=n)  # no batch left in epoch 1
    got = [row["lr"] for row in learn.recorder.history]
    assert got == [row["lr"] for row in ref.recorder.history]
