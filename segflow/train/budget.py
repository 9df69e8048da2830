"""Training to a time budget (``train.time_budget_min``): which epochs fit, and where the LR is.

Fixed epochs either overrun a wall-clock budget on a slower machine or stop short of what a
faster one could do. Budgeted training (Li, Yumer & Ramanan, ICLR 2020, "Budgeted Training:
Rethinking Deep Neural Network Training Under Resource Constraints") shows that for a fixed
budget the schedule to use is one whose learning rate decays with the *fraction of the budget
spent*, linearly or by poly, to its floor at the deadline; a full-length schedule cut off at the
deadline does worse. This module is that schedule for segflow's epoch loop
(:func:`segflow.train.loop.train_epochs`):

* **The clock.** ``spent`` is wall-clock seconds against the budget: training steps, waits for
  data, validation and checkpoints alike, and, when the launcher passes ``since`` (the stage's
  start), the start-up before the first step (Ray, loaders, the model). It is part of every
  checkpoint, so a run resumed after a kill or a SIGTERM spends only what was left. The time
  between the last checkpoint and a kill is not counted (nothing measured it); a restart inside
  the same stage (Ray's ``max_failures``) counts the time since that checkpoint.
* **The plan.** Before each epoch, the cost of one epoch (training plus validation and
  checkpoint: the mean of the last :data:`KEEP` whole epochs measured) says how many epochs
  still fit. The plan's *horizon*, where the clock puts the LR's floor, is the deadline less a
  validation. When ``train.epochs`` ends the run before the budget does, the LR reaches its
  floor at the last step of the last epoch instead. Otherwise the deadline cuts the epoch then
  running, a last, partial epoch (whole epochs alone left up to one of them unused: 10% of a
  20-minute budget in the first benchmark). No step and validation left: the run stops, and
  the log says so with the images/s that decided it.
* **The learning rate** is a pure function of the iteration count (for the warm-up) and of
  ``progress`` in [0, 1]: ``lr x min(1, (it + 1) / warmup_iters) x (1 - progress) ** power``
  (:func:`budget_factor`; ``train.poly_power`` 1 is Li et al.'s linear decay, 0.9 DeepLab's
  poly). After every step ``progress`` moves to the time spent over the horizon: the LR follows
  the clock, so an estimate that proves wrong (the machine got faster or slower) moves where
  the epochs end, never the floor off the deadline. When ``train.epochs`` is the limit, the
  step count counts too (the larger of the two): each of the n epochs left owns 1/n of the
  progress still to make, spread evenly over its steps, so the last one ends exactly on the
  floor however fast it ran. Progress never goes back. A warm-up counts steps, not time: it is
  there for the first steps' stability, whatever the budget.
* **The deadline.** A step after which another (at the slowest of the epoch's pace so far, the
  recent epochs' and the step just taken) would end later than a validation and checkpoint
  (the longest recent one) before the deadline, or after which the LR is at its floor,
  ends its epoch there, and so the run, with the LR set to its floor: a run that slowed down
  (another job on the machine) still ends at its budget, within one step plus its validation.
* **Deterministic enough.** Progress, the measured epoch costs and the time spent are plain
  numbers in the checkpoint (:meth:`TimeBudget.state_dict`); a resumed run continues from the
  same progress with the LR it had. What cannot repeat is the clock itself: two runs of one
  budget train the same number of epochs only on an equally fast machine.
* **DDP.** Every rank keeps a TimeBudget, but every reading of the clock is rank 0's,
  broadcast (:func:`segflow.train.collectives.rank0_value`, one float per step): all ranks
  compute the same LR, cut the same step and stop after the same epoch.

Before the first epoch has been measured, the horizon is the whole budget and the LR follows
the clock alone (there is no plan to follow yet).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

#: Whole epochs the cost estimate averages: recent enough to follow a change of load, more than
#: one so that a single slow epoch does not cut the plan short.
KEEP = 3
#: The share of train.time_budget_min that training keeps whatever the later stages' share.
MIN_TRAIN_SHARE = 0.5
#: Steps after an epoch's first that its running pace needs before it can move the deadline.
PACE_STEPS = 5


def budget_factor(it: int, progress: float, power: float = 0.9, warmup_iters: int = 0) -> float:
    """Multiplier of the base LR at iteration ``it`` with ``progress`` of the budget spent.

    A linear warm-up over the first ``warmup_iters`` steps (from 1/warmup_iters, as
    :func:`segflow.train.schedules.poly_factor`) times the poly decay of the progress, which is
    0 at ``progress`` 1: a product, so nothing jumps where the warm-up ends.
    """
    warm = min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else 1.0
    return warm * (1.0 - min(max(progress, 0.0), 1.0)) ** power


@dataclass
class EpochCost:
    """What one epoch took (seconds against the budget), as the plan reads it."""

    train_s: float  # the training steps, waits for data included
    eval_s: float  # validation, then the checkpoint (or Ray report) after it
    steps: int
    images_per_second: float
    whole: bool = True  # False: the deadline ended it early, so it says nothing of a whole one


@dataclass
class Plan:
    """The plan made before one epoch."""

    epochs: int | None  # the total the budget allows now (None: nothing measured yet)
    horizon: float  # spent seconds at which the LR reaches its floor by the clock
    start: float  # progress at this epoch's start
    end: float | None  # progress at its last step by the plan (None: the clock alone)
    final: bool  # the last epoch of the plan
    finish: float | None = None  # spent seconds at which the plan's last validation ends


class TimeBudget:
    """The time budget of one training run: its clock, plan, progress and checkpointed state.

    The loop calls, on every rank alike (each call reads the agreed clock, a collective under
    DDP): :meth:`next_epoch` before an epoch (None: stop), :meth:`step` after each training step
    (before the LR schedule steps), :meth:`trained` when the epoch's steps end,
    :meth:`validated` after its validation and :meth:`done` after its checkpoint.
    """

    def __init__(
        self,
        minutes: float,
        max_epochs: int,
        *,
        after_minutes: float = 0.0,
        reference_ips: float | None = None,
        batch_images: int | None = None,
        since: float | None = None,
        agree: Callable[[float], float] | None = None,
    ):
        self.budget_seconds = float(minutes) * 60.0
        #: The later stages' time at the reference pace, and that pace (images/s of training):
        #: a slower machine is slower after training too, so its training ends earlier.
        self.after_seconds = float(after_minutes) * 60.0
        self.reference_ips = reference_ips
        #: Images per training step (all workers): the running epoch's pace in images/s.
        self.batch_images = batch_images
        self._current_ips: float | None = None
        self._plan_eval = 0.0
        self.max_epochs = max_epochs
        self.progress = 0.0
        self.costs: list[EpochCost] = []
        self.plan: Plan | None = None
        #: Why the run ended: "budget" (no epoch fits), "epochs" (train.epochs reached) or None.
        self.stopped_by: str | None = None
        self._since = since
        self._agree = agree if agree is not None else (lambda seconds: seconds)
        self._base = max(0.0, time.time() - since) if since is not None else 0.0
        self._t0 = time.perf_counter()
        self._epoch_t0 = self._val_t0 = self._step_t = self._first_step_t = 0.0
        self._steps = 0

    # -- the clock ---------------------------------------------------------------------------

    def local_spent(self) -> float:
        """This process's reading of the time spent: for log lines, never for a decision."""
        return self._base + time.perf_counter() - self._t0

    def spent(self) -> float:
        """The time spent, as every rank agrees it (rank 0's clock): a collective under DDP."""
        return self._agree(self.local_spent())

    @property
    def minutes(self) -> float:
        """The configured budget (``train.time_budget_min``)."""
        return self.budget_seconds / 60.0

    def slowdown(self) -> float:
        """How many times slower than the reference pace this run trains (>= 1; 1 without a
        reference or before an epoch was measured)."""
        if self.reference_ips is None:
            return 1.0
        estimate = self.epoch_estimate()
        # The slower of the recent epochs' pace and the running epoch's: a machine that slows
        # down mid-epoch moves the deadline at once, not after the epoch it overran.
        paces = [estimate[2]] if estimate is not None else []
        paces += [self._current_ips] if self._current_ips is not None else []
        paces = [ips for ips in paces if ips > 0]
        return max(1.0, self.reference_ips / min(paces)) if paces else 1.0

    @property
    def seconds(self) -> float:
        """The deadline, in seconds of the clock: the budget, less what the stages after
        training will take beyond their time at the reference pace (``after_minutes`` x
        (slowdown - 1)), so that the whole ``dvc repro`` keeps to its total; but never less
        than :data:`MIN_TRAIN_SHARE` of the budget. On a machine so slow that the later
        stages alone would fill the total, keeping it would mean no model (a CamVid run whose
        first epoch ran 12x slower than the reference was left 44 s of training): the total is
        overrun instead, and the log says so."""
        return max(self.budget_seconds * MIN_TRAIN_SHARE, self.budget_seconds - self.later_share())

    def later_share(self) -> float:
        """Seconds the stages after training need beyond their time at the reference pace."""
        return self.after_seconds * (self.slowdown() - 1.0)

    # -- estimates ---------------------------------------------------------------------------

    def _recent(self) -> list[EpochCost]:
        return [c for c in self.costs if c.whole][-KEEP:]

    def epoch_estimate(self) -> tuple[float, float, float] | None:
        """(training s, validation + checkpoint s, images/s) of an epoch by the recent whole
        epochs, or None before one was measured."""
        recent = self._recent()
        if not recent:
            return None
        n = len(recent)
        return (
            sum(c.train_s for c in recent) / n,
            sum(c.eval_s for c in recent) / n,
            sum(c.images_per_second for c in recent) / n,
        )

    # -- the loop's calls --------------------------------------------------------------------

    def next_epoch(self, done: int) -> Plan | None:
        """The plan for epoch ``done + 1``, or None: no epoch fits (:attr:`stopped_by` says so).

        ``train.epochs`` is the loop's own bound; here it only caps the plan, so that a budget
        larger than the epochs need still ends its LR at the floor after the last epoch.
        """
        now = self.spent()
        left = self.seconds - now
        bound = max(self.max_epochs - done, 1)
        estimate = self.epoch_estimate()
        if self.costs and (not self.costs[-1].whole or left <= 0):
            # The deadline cut the last epoch (its LR at the floor), or the time is gone. A run
            # with no epoch yet trains one whatever is left: one step at least, then the deadline
            # cuts it (a model, not none).
            self.plan, self.stopped_by = None, "budget"
            return None
        if estimate is None:  # nothing measured yet: the clock alone, towards the whole budget
            final = bound == 1
            plan = Plan(None, self.seconds, self.progress, 1.0 if final else None, final)
        else:
            train_s, eval_s, _ = estimate
            fit = self.epochs_left(left, train_s, eval_s)
            step_s = train_s / max(1, self._recent()[-1].steps)
            if fit >= bound:
                # train.epochs ends the run first: the LR reaches its floor at the last step of
                # its last epoch, spread evenly over the epochs' steps (the clock, towards the
                # deadline, leads only if the epochs get slower than the budget allows).
                end = self.progress + (1.0 - self.progress) / bound
                finish = now + bound * (train_s + eval_s)
                plan = Plan(done + bound, self.seconds - eval_s, self.progress, end, bound == 1)
                plan.finish = finish
            elif left - eval_s > step_s or self.progress < 1.0:
                # The budget ends the run: the LR follows the clock to its floor at the deadline
                # less a validation, where the deadline cuts the epoch then running (the last,
                # partial one). Clock-led, a machine that gets faster or slower than the
                # estimate moves only where the epochs end, never the LR's floor off the
                # deadline. An LR not yet at its floor gets one more step in any case.
                epochs = done + max(1, math.ceil(fit))
                plan = Plan(epochs, self.seconds - eval_s, self.progress, None, fit <= 1)
            else:
                self.plan, self.stopped_by = None, "budget"
                return None
        self.plan = plan
        self._epoch_t0 = self._step_t = self._first_step_t = now
        self._current_ips = None
        self._plan_eval = self.seconds - plan.horizon  # the validation the plan keeps free
        return plan

    @staticmethod
    def epochs_left(left: float, train_s: float, eval_s: float) -> float:
        """Epochs of training that fit in ``left`` seconds, each followed by its validation:
        the whole ones plus the part of one more that fits once its validation is paid for."""
        whole = math.floor(left / (train_s + eval_s))
        rest = left - whole * (train_s + eval_s) - eval_s
        return whole + (max(rest, 0.0) / train_s if train_s > 0 else 0.0)

    def step(self, step: int, steps: int) -> bool:
        """Move the progress after training step ``step`` of ``steps``; True: the deadline has
        come, end the epoch after this step."""
        plan = self.plan
        if plan is None:
            raise RuntimeError("TimeBudget.step before next_epoch")
        now = self.spent()
        # The running epoch's pace, from the end of its first step (which also waits for the
        # loader's workers to start) and over enough steps not to mistake one slow batch for a
        # slow machine: a pace from two steps once ended a run 9 minutes early.
        if step == 1:
            self._first_step_t = now
        timed = step - 1
        if self.batch_images and timed >= PACE_STEPS and now > self._first_step_t:
            self._current_ips = timed * self.batch_images / (now - self._first_step_t)
        # The horizon follows a deadline that moves (time_budget_after_min): where the plan put
        # it, less how much earlier the deadline is now.
        horizon = self.seconds - self._plan_eval
        progress = now / horizon if horizon > 0 else 1.0
        if plan.end is not None:
            progress = max(progress, plan.start + (plan.end - plan.start) * step / steps)
        self.progress = min(1.0, max(self.progress, progress))
        self._steps = step
        # Another step at this epoch's pace would end past the deadline less a validation, or
        # the LR is at its floor (further steps would train at LR 0): this step is the run's
        # last, and the LR from here on is the floor. The pace is the slowest of the epoch's
        # mean, the recent epochs' and this very step's (a machine that slowed down a moment
        # ago is as slow for the next step), and the validation is the longest of the recent
        # ones: a deadline overrun by a misjudged step would end the run with its LR above the
        # floor, which costs more than ending a step early.
        pace = max((now - self._epoch_t0) / step if step > 0 else 0.0, now - self._step_t)
        self._step_t = now
        estimate = self.epoch_estimate()
        if estimate is not None:
            pace = max(pace, estimate[0] / max(1, self._recent()[-1].steps))
        eval_s = max((c.eval_s for c in self._recent()), default=0.0)
        # After an epoch's last step, its own validation comes before another step.
        ahead = pace + (eval_s if step >= steps else 0.0)
        if now + ahead >= self.seconds - eval_s or self.progress >= 1.0:
            self.progress = 1.0
            return True
        return False

    def trained(self) -> None:
        """The epoch's training steps have ended; validation starts."""
        self._val_t0 = self.spent()

    def validated(self, steps: int, images_per_second: float) -> float:
        """Record the epoch (validation measured so far) before its checkpoint is written, so
        the checkpoint holds it; returns the time spent."""
        now = self.spent()
        whole = self._steps >= steps
        train_s = self._val_t0 - self._epoch_t0
        self.costs.append(
            EpochCost(train_s, now - self._val_t0, self._steps, images_per_second, whole)
        )
        return now

    def done(self) -> None:
        """The checkpoint is written: its time counts into the epoch's validation cost."""
        if self.costs:
            self.costs[-1].eval_s = self.spent() - self._val_t0

    # -- what the log and MLflow show --------------------------------------------------------

    def eta(self) -> float:
        """Seconds until the run should end: the plan's last validation, else the budget."""
        now = self.local_spent()
        plan = self.plan
        if plan is None or plan.finish is None:
            return max(0.0, self.seconds - now)
        return max(0.0, min(self.seconds, plan.finish) - now)

    def stop_reason(self, epochs: int) -> str:
        """One line on why the run ends after ``epochs`` epochs."""
        left = self.seconds - self.local_spent()
        head = f"train: time budget {self.minutes:g} min (train.time_budget_min)"
        early = self.budget_seconds - self.seconds
        if early > 0:
            head += (
                f", {early / 60:.1f} min of it left to the later stages: training ran "
                f"{self.slowdown():.1f}x slower than the reference {self.reference_ips:g} "
                "images/s (train.time_budget_reference_ips), and so will they"
            )
            wanted = self.later_share()
            if wanted > early + 1.0:  # seconds: not a rounding difference
                head += (
                    f" (they would need {wanted / 60:.1f}; training keeps half its budget, so "
                    "the whole dvc repro will overrun its total)"
                )
        if self.stopped_by == "epochs":
            return (
                f"{head}: train.epochs ({self.max_epochs}) reached after {epochs} epochs with "
                f"{seconds(max(left, 0.0))} left"
            )
        estimate = self.epoch_estimate()
        if estimate is None:
            return f"{head}: spent after {epochs} epoch(s)"
        train_s, eval_s, ips = estimate
        epoch = (
            f"~{seconds(train_s + eval_s)}: {seconds(train_s)} of training at {ips:.1f} "
            f"images/s, {seconds(eval_s)} of validation and checkpoint"
        )
        if self.costs and not self.costs[-1].whole:
            return (
                f"{head}: the deadline ended epoch {epochs} after {self.costs[-1].steps} steps "
                f"(a whole epoch {epoch}); {seconds(max(left, 0.0))} left"
            )
        return (
            f"{head}: stopping after epoch {epochs}: another epoch ({epoch}) does not fit in "
            f"the {seconds(max(left, 0.0))} left"
        )

    def summary(self, epochs: int) -> dict:
        """The budget's facts for MLflow and the stage's log: what it allowed, and why."""
        estimate = self.epoch_estimate()
        return {
            "time_budget_min": self.minutes,
            "budget_deadline_min": self.seconds / 60.0,
            "budget_slowdown": self.slowdown(),
            "budget_epochs": epochs,
            "budget_stopped_by": self.stopped_by or "",
            "budget_spent_min": self.local_spent() / 60.0,
            "budget_epoch_seconds": sum(estimate[:2]) if estimate else math.nan,
            "budget_images_per_second": estimate[2] if estimate else math.nan,
        }

    # -- the checkpoint ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain numbers and lists (a checkpoint is read with ``weights_only=True``)."""
        return {
            "seconds": self.budget_seconds,
            "spent": self.local_spent(),
            "wall": time.time(),
            "progress": self.progress,
            "costs": [asdict(c) for c in self.costs],
            "stopped_by": self.stopped_by,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue a checkpointed budget: the same progress and costs, and the time spent then
        plus this stage's start-up (or, in the same stage, the time since the checkpoint)."""
        self.progress = float(state["progress"])
        self.costs = [EpochCost(**c) for c in state.get("costs", [])]
        self.stopped_by = state.get("stopped_by")
        since = self._since
        gap = time.time() - max(since, float(state["wall"])) if since is not None else 0.0
        self._base = float(state["spent"]) + max(gap, 0.0)
        self._t0 = time.perf_counter()


def budget_lr(
    optimizer: Optimizer, budget: TimeBudget, power: float = 0.9, warmup_iters: int = 0
) -> LambdaLR:
    """``LambdaLR`` applying :func:`budget_factor` with ``budget``'s progress at each step; its
    state_dict holds the iteration count, the budget's the progress."""
    return LambdaLR(optimizer, lambda it: budget_factor(it, budget.progress, power, warmup_iters))


def eta_seconds(
    step: int,
    steps: int,
    elapsed: float,
    epochs_after: int,
    past: list[tuple[float, float]],
) -> float:
    """Seconds left of a fixed-epoch run, at ``step`` of ``steps`` of an epoch ``elapsed``
    seconds in, with ``epochs_after`` epochs still to come after it; ``past`` holds the
    (training, validation + checkpoint) seconds of this process's earlier epochs.

    The rest of this epoch at its own pace so far, then its validation and the later epochs at
    the recent epochs' cost (this epoch's pace and no validation before one was measured).
    """
    per_step = elapsed / step if step else 0.0
    recent = past[-KEEP:]
    train_s = sum(t for t, _ in recent) / len(recent) if recent else per_step * steps
    eval_s = sum(e for _, e in recent) / len(recent) if recent else 0.0
    return (steps - step) * per_step + eval_s + epochs_after * (train_s + eval_s)


def seconds(value: float) -> str:
    """``0.35 s``, ``4.2 s``, ``62 s``: a duration in a sentence, as precise as it needs."""
    return f"{value:.2f} s" if value < 1 else f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def format_duration(seconds: float) -> str:
    """``1:02:03`` or ``2:03`` (h:mm:ss, m:ss): the ETA of a log line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
