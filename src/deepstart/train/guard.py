"""The divergence guard: "halve the learning rate until the loss stops diverging", automatically.

It keeps in-memory snapshots of the last known-good training state. When the loss becomes
NaN/inf or blows up, it puts the snapshot back, lowers the LR (``learn.lr_mult``) and redoes
the epoch from the batch after the snapshot, with exactly the same batches. The lowered LR
is also the most the rest of the schedule reaches: a divergence in a warm-up caps the peak
still ahead, rather than scaling a climb that would pass the safe LR again. Each time it
first sweeps the LR for a few steps from the restored state (:mod:`deepstart.train.lr_probe`).
The first time in a fit it halves the LR, unless the sweep blew up below half already; from
the second on, or in that case, it jumps to the sweep's safe LR when that is lower, so an LR
10,000x too high is brought down in one or two restores, not fourteen. With Adam and its kin
at an LR of the weights' own size, it goes on at a tenth of their median size instead, less
for deep nets (``adaptive_cap``), with no sweep. With pretrained weights training
(``fine_tuning``) it sweeps for every optimizer and goes a decade below the sweep's LR; an LR
it lowered while other weights trained (fine_tune's frozen phase: the head and BatchNorm) is
undone at the next fit. A network that went dead (every input answered alike) counts as
diverged too; it goes back to where the LR it died under began (the state the last restore
went back to), or to the fit's start if it died from there before.
Only when ``max_tries`` restores did not help, or the LR would fall below ``min_lr``, does it
stop the fit, with an explanation, instead of training on garbage.

Example:
    >>> guard = DivergenceGuard()
    >>> learn = Learner(data, model, callbacks=[guard])
    >>> learn.fit_one_cycle(3, lr_max=10.0)  # far too high: the guard brings it down
    >>> [e["new_lr"] for e in guard.events]
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from deepstart.train.callbacks import Callback, CancelFit, ParamScheduler, RestartEpoch
from deepstart.train.lr_probe import adaptive_cap, cap_depth, fine_tuning, next_lr, sweep
from deepstart.train.watch import DEAD, LossWatch, output_spread


class DivergenceGuard(Callback):
    """Restores the last good state and lowers the LR when training diverges.

    Args:
        max_tries: restores allowed per fit; the next divergence stops the fit (CancelFit)
            with the weights of the last good state and ``gave_up`` set.
        factor: what the LR that diverged is multiplied by at the first restore, and at
            most at the later ones (where a sweep may lower it further). ``learn.lr_mult``
            is set so that the rest of the schedule peaks at that new LR.
        probe_steps: steps of the LR sweep run at every divergence (0: never sweep, only
            scale by ``factor``), except an Adam-type LR far too high, which goes to
            ``adaptive_cap``. It trains on the last 4 batches the fit saw,
            which the guard keeps references to, then the restore undoes it.
        min_lr: the lowest LR the guard lowers to; below it, it gives up.
        spike: a batch loss above ``spike`` x the smoothed loss is bad; 3 bad in a row, or
            one NaN/inf, is a divergence (see :class:`LossWatch`). So is a smoothed loss
            that climbed to ``spike`` x that of guessing ("climb"), a valid loss NaN or
            ``spike`` x that of guessing, and a network that varied, then gave every input
            of 3 batches in a row the same output ("dead": redone from where the LR of the
            last restore began, even in an earlier epoch, else from the epoch's start).
        snapshot_every: batches between snapshots. Each copies the weights and optimizer
            state to CPU memory (at most 3 are held: the epoch's start and the last two;
            also the fit's first, and the one the last restore went back to, for a net that
            dies); one is also taken at the start of every epoch, so the first batches are
            covered.
        check_every: batches between loss checks. Reading a loss is a host sync, free on the
            CPU but a pipeline stall on a GPU, so by default (None) every batch on the CPU and
            every 10 elsewhere; a late check only wastes a few batches before the restore.
        log: where the one-line messages go.

    ``events`` holds one dict per divergence: split ("train"/"valid"), epoch (1-based, as
    in metrics.jsonl), batch (0-based index in the epoch), kind ("nan"/"spike"/"climb"/
    "dead"), loss, old_lr, new_lr, how ("halved"/"swept"/"capped"/"swept, fine-tuning"),
    tries, action ("restored"/"gave_up"), restored_batch, restored_epoch (earlier than epoch
    only for a dead net). With ``learn.recorder.path`` set, each is also appended there as
    ``{"event": "divergence", ...}``.
    """

    order = 25  # after the Recorder and Progress have seen the batch
    skip_lr_find = True  # the LR finder diverges on purpose

    def __init__(
        self,
        max_tries: int = 8,
        factor: float = 0.5,
        spike: float = 4.0,
        snapshot_every: int = 20,
        check_every: int | None = None,
        probe_steps: int = 24,
        min_lr: float = 1e-8,
        log: Callable[[str], Any] = print,
    ) -> None:
        self.max_tries, self.factor = int(max_tries), float(factor)
        self.probe_steps, self.min_lr = int(probe_steps), float(min_lr)
        self.snapshot_every, self.check_every = max(int(snapshot_every), 1), check_every
        self.log = log
        self.watch = LossWatch(spike=spike)
        self.events: list[dict[str, Any]] = []
        self.gave_up = False
        # What the guard has multiplied ``learn.lr_mult`` by, and which weights were trainable
        # then: an LR found safe for other weights is undone at the next fit (see before_fit).
        self._own, self._lowered_for = 1.0, frozenset()

    # -- events ----------------------------------------------------------------------------
    def before_fit(self) -> None:
        if self._own != 1.0 and self._trainable() != self._lowered_for:
            # The LR was safe for other weights: fine_tune's frozen phase finds it for the head
            # (and BatchNorm), which took an SGD LR 25x what the unfrozen ImageNet body does
            # (23% where the sane LR reaches 57%). Back to the plan; a divergence lowers it
            # for these.
            self.learn.lr_mult /= self._own
            self.log(
                f"divergence guard: other weights train now: back to the planned LR (x "
                f"{1 / self._own:.3g}); it is lowered again if it diverges"
            )
            self._own = 1.0
        self.tries, self.gave_up, self.lrs_tried = 0, False, []
        self._valid_best = math.inf
        self._first_loss: float | None = None  # the fit's first finite training loss
        self.watch.reset()
        self._recent: deque[tuple[Any, Any]] = deque(maxlen=4)  # batches for a sweep
        self._dead, self._alive = 0, False  # constant-output batches in a row; ever varied
        self._anchor: dict[str, Any] | None = None  # the state the last restore went back to
        self._origin: dict[str, Any] | None = None  # the fit's first snapshot
        self._died_from: dict[str, Any] | None = None  # where the last dead net went back to
        every = self.check_every or (1 if self.learn.device.type == "cpu" else 10)
        self._check_every, self._restarting = max(int(every), 1), False

    def before_epoch(self) -> None:
        # (loss on the device, batch, lr) not yet checked
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int, float]] = []
        self._since = 0
        self._sum, self._count = 0.0, 0  # finite training losses since the epoch (re)started
        if self._restarting:  # we just restored one of our snapshots: keep them
            self._restarting = False
            return
        # The fit loop can only redo the current epoch, so every restore point lies in it:
        # the state at its start (kept all epoch), plus the last two periodic ones.
        self._snaps: list[dict[str, Any]] = []
        self._take(next_batch=self.learn.restart_at)

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.loss is None:
            return
        lr = float(learn.opt.param_groups[-1]["lr"])
        self._pending.append(
            (learn.loss.detach(), output_spread(learn.pred, learn.loss.device), learn.iter, lr)
        )
        self._recent.append((learn.xb, learn.yb))
        self._since += 1
        nxt = learn.iter + 1
        snap_due = self._since >= self.snapshot_every and nxt < learn.n_iter
        if snap_due or len(self._pending) >= self._check_every:
            self._check()
        # Only a state whose losses all looked fine is worth going back to.
        if snap_due and self.watch.streak == 0:
            self._take(next_batch=nxt)

    def after_train(self) -> None:
        self._check()

    def after_validate(self) -> None:
        learn, watch = self.learn, self.watch
        loss = learn.metrics.get("valid_loss", 0.0)
        lr = float(learn.opt.param_groups[-1]["lr"])
        # A model whose held-out loss is spike x that of guessing (ln K nats; for regression,
        # of predicting the mean) has blown up, even if its training losses looked fine (e.g.
        # BatchNorm's running statistics). Overfitting raises the valid loss too, but slowly
        # and never that far.
        chance = learn.baseline_loss
        best = self._valid_best if math.isfinite(self._valid_best) else None
        kind = "spike" if math.isfinite(loss) else "nan"
        blown = kind == "nan" or loss > watch.spike * max(chance, best or 0.0)
        if watch.streak:
            # The epoch ended inside a run of bad batches, and the loop cannot go back an
            # epoch once the next has begun: let the held-out loss decide now.
            ref = best if best is not None else watch.smooth
            if blown or loss > watch.spike * max(ref, watch.floor):
                first_bad = learn.n_iter - watch.streak
                self._diverged("valid", kind, loss, None, lr, first_bad)
            watch.streak = 0  # a few noisy batches, not a divergence
        if blown:  # go back to the start of the epoch
            self._diverged("valid", kind, loss, None, lr, first_bad=-1)
        # A network killed by a huge LR sits at chance (valid loss ~ ln K, no NaN) while
        # lone spikes of thousands of nats come and go: each alone is noise to the batch
        # rule and not folded into the smoothed loss. An epoch whose mean training loss is
        # spike x that of guessing went through a blow-up (mnist_cnn, AdamW at LR 10: 44
        # nats, ln 10 = 2.3): back to the epoch's start.
        mean = self._sum / self._count if self._count else math.nan
        if mean > watch.spike * self._guessing():
            self._diverged("train", "spike", mean, None, lr, first_bad=-1)
        self._valid_best = min(self._valid_best, loss)

    # -- the work --------------------------------------------------------------------------
    def _take(self, next_batch: int) -> None:
        snap = {"state": self.learn.snapshot(), "next": next_batch, "watch": self.watch.state()}
        self._snaps.append(snap)
        if self._origin is None:  # kept all fit (a fresh net's optimizer state is empty)
            self._origin = snap
        if len(self._snaps) > 3:
            del self._snaps[1]  # drop the oldest periodic one, keep the epoch start
        self._since = 0

    def _check(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        both = torch.stack([torch.stack([p[0].float(), p[1]]) for p in pending])
        values, spreads = both.cpu().T.tolist()  # one host sync
        if self.learn.dist is not None:
            # Losses are already the same on every rank; the outputs are each rank's own.
            # Summed (each >= 0; a NaN stays NaN), a net is dead only where it is on every
            # rank, and every rank restores together.
            spreads = self.learn.dist.sum(spreads)
        for value, spread, (_, _, batch, lr) in zip(values, spreads, pending):
            if self._is_dead(spread):
                # It was dying before its outputs became constant: redo the whole epoch.
                self._diverged("train", "dead", value, batch, lr, first_bad=-1)
            if math.isfinite(value):
                self._sum, self._count = self._sum + value, self._count + 1
                if self._first_loss is None:
                    self._first_loss = value
            kind = self.watch.update(value)
            if kind is not None:
                first_bad = batch - (self.watch.streak - 1 if kind == "spike" else 0)
                self._diverged("train", kind, value, batch, lr, first_bad)
            elif self.watch.smooth > self.watch.spike * self._guessing():
                self._diverged("train", "climb", self.watch.smooth, batch, lr, self._climb_start())

    def _is_dead(self, spread: float) -> bool:
        """Whether the network has just spent ``patience`` batches in a row answering every
        input alike (spread 0; nan: a batch of one, not counted), after having varied. Dead
        ReLUs feed the head zeros, so it outputs its bias: the loss sits near guessing with
        no spike and no NaN (mnist_cnn, AdamW at a halved LR of 0.31), which no loss rule
        sees, and the net never recovers."""
        if math.isnan(spread):
            return False
        if spread > DEAD:
            self._dead, self._alive = 0, True
            return False
        self._dead += 1
        return self._alive and self._dead >= self.watch.patience

    def state_dict(self) -> dict[str, Any]:
        # A resumed fine_tune must undo a frozen phase's LR at the unfrozen one as an
        # uninterrupted run does; the weights trainable now are those it was lowered for.
        return {"own": self._own} if self._own != 1.0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._own, self._lowered_for = float(state["own"]), self._trainable()

    def _trainable(self) -> frozenset[str]:
        return frozenset(n for n, p in self.learn.model.named_parameters() if p.requires_grad)

    def _guessing(self) -> float:
        """The loss level of a model that knows nothing: ln K (for regression, predicting
        the mean), or the fit's first loss where a fresh model started higher."""
        return max(self.learn.baseline_loss, self._first_loss or 0.0, self.watch.floor)

    def _climb_start(self) -> int:
        """The first batch of a climb: where the newest snapshot taken above twice the
        guessing level resumes (the batch rule folds slow rises into its average, and Adam at
        a huge LR climbs to tens of nats in steps each under spike x the last, then sits at
        chance with dead units: no NaN, a valid loss near ln K). Snapshots below it are good."""
        level, beta = 2 * self._guessing(), self.watch.beta
        for snap in self._snaps:
            avg, n, _ = snap["watch"]
            if n and avg / (1 - beta**n) > level:
                return snap["next"]
        return self.learn.iter

    def _diverged(
        self,
        split: str,
        kind: str,
        loss: float,
        batch: int | None,
        lr: float,
        first_bad: int,
    ) -> None:
        """Go back to the newest snapshot taken before the first bad batch; raise."""
        learn, epoch = self.learn, self.learn.epoch
        # A snapshot's weights produced the loss of its "next" batch, so that batch must be
        # good; first_bad -1 (a NaN valid loss, a dead net) redoes the whole epoch.
        good = [s for s in self._snaps if s["next"] < first_bad] or self._snaps[:1]
        snap = good[-1]
        del self._snaps[len(good) :]
        if kind == "dead" and self._anchor is not None:
            # The net died under the LR the last restore set: it was dying before its
            # outputs became constant, maybe since that restore (fast_mnist, AdamW halved to
            # 6.7: dead in epoch 2, and every redo of epoch 2 died again). Back to where
            # that LR began, if need be in an earlier epoch; and if it died from there too
            # at a lower LR, that state was dying already (the warm-up ran Adam at LRs of
            # 1-10 for 20 batches before the first blow-up): back to the fit's start.
            snap = self._anchor
            if snap is self._died_from and self._origin is not None:
                snap = self._origin
            self._snaps, self._died_from = [snap], snap
        learn.restore(snap["state"])
        self.watch.load_state(snap["watch"])
        self._dead = 0
        learn.restart_at = snap["next"]
        self.tries += 1
        self.lrs_tried.append(lr)
        # Adam and its kin, when the LR that diverged moved every weight by its whole size
        # per step (10x the cap: far too high, not a bad batch at a sane LR): on at a tenth
        # of the weights per step (lr_probe), with no sweep. Not more, which a sweep need not
        # see: a BatchNorm net can train on at 10x the sane LR without blowing up, and end
        # far below what it reaches (ResNet-18: 89% for 100%). Not less either: from a net a
        # mad LR just wrecked, a sweep can also blow up early and land far too low
        # (ResNet-50: 7.1e-5, a fortieth of the cap). If the cap diverges too, the next
        # restore sweeps down from it.
        # On cached features (head_only) only the head learns, whatever else requires_grad.
        tuning = fine_tuning(learn.model) and not learn.head_only
        limit = None if tuning and self.probe_steps else adaptive_cap(learn.model, learn.opt)
        new_lr, how = lr * self.factor, "halved"
        if limit is not None and lr >= 10 * limit and limit >= self.min_lr:
            new_lr, how = limit, "capped"
        elif self.probe_steps > 0 and self.tries <= self.max_tries:
            # Ask the curve how far down to go (next_lr: halve the first time, unless the
            # curve blows up below half already; from the second time, the curve's LR).
            lrs, losses = sweep(learn, list(self._recent), lr, steps=self.probe_steps)
            learn.restore(snap["state"])
            new_lr, how = next_lr(
                lr,
                lrs,
                losses,
                period=len(self._recent),  # the sweep cycles through them
                guessing=learn.baseline_loss,
                factor=self.factor,
                first=self.tries == 1,
            )
            if tuning and how == "swept":
                # Pretrained weights: a sweep sees the loss of 4 batches, which a new head
                # lowers at LRs that wreck the features under it; fine-tuning LRs are a
                # decade below training from scratch's (fastai, Keras). EfficientNet-Lite0
                # on CIFAR photos, every layer at one LR: swept to 4.3e-2 (SGD), 2.1e-3 (Adam)
                # where 1e-2 and 3e-4 train it; the cap (9.7e-3) was further off.
                new_lr, how = new_lr / 10, "swept, fine-tuning"
        gave_up = self.tries > self.max_tries or new_lr < self.min_lr
        # The LR that diverged, and any higher one, is unsafe from the restored state on: in
        # one-cycle's warm-up (LR at batch 3 ~ peak/16) scaling the schedule by new/old
        # would climb ~16x past the safe LR and kill the network (mnist_cnn, Adam: dead at
        # chance, no rule firing). So the rest of the schedule peaks at new_lr.
        peak = self._peak_ahead()
        capped = new_lr < lr and peak is not None and peak > lr * 1.01
        if not gave_up:
            scale = new_lr / (peak if capped else lr)
            learn.lr_mult *= scale
            self._own *= scale
            self._lowered_for = self._trainable()
        if split == "valid":
            subject = "valid loss"
        else:
            subject = {"climb": "smoothed loss"}.get(kind, "loss")
            if batch is None:
                subject = "mean loss of the epoch"
        what = f"{subject} became {loss}" if kind == "nan" else f"{subject} rose to {loss:.3g}"
        if kind == "dead":
            what = (
                f"network went dead (the same output for every input for "
                f"{self.watch.patience} batches, loss {loss:.3g})"
            )
        if kind == "climb" or (split == "train" and batch is None):
            what += f" (guessing costs {self._guessing():.3g})"
        where = f"epoch {epoch + 1}" + (f" batch {batch}" if batch is not None else "")
        back = f"the state before batch {snap['next']} of epoch {learn.epoch + 1}"
        event = {
            "split": split,
            "phase": learn.phase,  # fine_tune's: 0 frozen, 1 unfrozen; 0 for a plain fit
            "epoch": epoch + 1,
            "batch": batch,
            "kind": kind,
            "loss": loss,
            "old_lr": lr,
            "new_lr": None if gave_up else new_lr,
            "how": how,
            "lr_mult": learn.lr_mult,
            "tries": self.tries,
            "action": "gave_up" if gave_up else "restored",
            "restored_batch": snap["next"],
            "restored_epoch": learn.epoch + 1,
        }
        self.events.append(event)
        self._write(event)
        if gave_up:
            self.gave_up = True
            tried = ", ".join(f"{v:.1e}" for v in self.lrs_tried)
            after = (
                f"{self.tries - 1} restores"
                if self.tries > self.max_tries
                else f"the LR reached the floor of {self.min_lr:.0e}"
            )
            self.log(
                f"divergence guard: gave up: the {what} at {where} after {after} "
                f"(LRs {tried}); put back {back} and stopped. The LR is far too "
                f"high for this model and data, or the data holds bad values (NaN, inf, "
                f"huge numbers): try --lr {min(self.lrs_tried) / 10:.0e} or run "
                f"`deepstart lr-find`."
            )
            raise CancelFit
        if how == "swept":
            verb = f"swept the LR from there and set it to {new_lr:.1e}"
        elif how == "swept, fine-tuning":
            verb = (
                f"swept the LR from there and set it to {new_lr:.1e}, a tenth of the sweep's "
                f"(pretrained weights train: fine-tuning LRs are lower)"
            )
        elif how == "capped":
            depth = cap_depth(learn.model)
            deep = f", times {depth:.2f} for a net this deep" if depth < 1 else ""
            verb = (
                f"set the LR to {new_lr:.1e}, a tenth of the weights' median size{deep} (an "
                f"Adam-type step moves each weight by about the LR)"
            )
        elif self.factor == 0.5:
            verb = f"halved the LR to {new_lr:.1e}"
        else:
            verb = f"scaled the LR by {self.factor:g} to {new_lr:.1e}"
        cap = f", the most it reaches from there on (it was to climb to {peak:.1e})"
        self.log(
            f"divergence guard: {what} at {where} (lr {lr:.1e}); went back to {back} and "
            f"{verb}{cap if capped else ''} (try {self.tries} of {self.max_tries})"
        )
        self._anchor = snap
        self._restarting = True
        raise RestartEpoch

    def _peak_ahead(self) -> float | None:
        """The highest LR (of the last param group, as ``lr``) the fit's schedule would set
        from the restored position on at the current ``lr_mult``; None outside a fit."""
        learn = self.learn
        sched = learn.get_callback(ParamScheduler)
        if sched is None or learn.opt is None:
            return None
        pct = learn.train_iter / max(learn.total_iters, 1)
        scale = float(learn.opt.param_groups[-1].get("lr_scale", 1.0))
        return sched.peak(pct) * learn.lr_mult * scale

    def _write(self, event: dict[str, Any]) -> None:
        path = getattr(self.learn.recorder, "path", None)
        if path is None:
            return
        # JSON has no NaN: a non-finite loss is written as null (kind says which).
        row = {"event": "divergence", **event}
        if not math.isfinite(row["loss"]):
            row["loss"] = None
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
