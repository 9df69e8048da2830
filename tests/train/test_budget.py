"""Training to a time budget (train.time_budget_min, segflow.train.budget): the run ends at its
deadline with the LR at its floor, a resumed run spends only what was left, the facts reach the
log and MLflow, and without a budget nothing changes.

The timing checks hold on a loaded machine too: every bound is stated in the run's own measured
step, epoch and validation times, not in fixed seconds.
"""

from __future__ import annotations

import time

import mlflow
import pytest
import torch

from segflow import tracking
from segflow.data.shards import read_index
from segflow.stages.train import budget_line
from segflow.train.budget import EpochCost, TimeBudget, budget_factor
from segflow.train.loop import fit
from segflow.train.state import LAST
from tests.train.conftest import make_shards, tiny_params

#: Per-epoch (train loss, LR) of ``tiny_params(epochs=4, warmup_iters=2)`` on the ``shards``
#: fixture, captured from main's code before the time budget existed (commit 35f225c).
BEFORE_BUDGET = [
    (1.1247756481170654, 0.05),
    (1.1217065453529358, 0.03471265813308035),
    (1.1166402101516724, 0.018602052900565075),
    (1.1121993660926819, 0.0),
]
#: The epoch bound of the budgeted runs: far more than the budget allows.
MANY = 2000


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def steps_shards(tmp_path_factory):
    """16 training images: 8 steps of batch 2 per epoch, so a deadline can fall mid-epoch."""
    return make_shards(tmp_path_factory.mktemp("budget_shards"), train=16, val=2)


def bounds(budget: TimeBudget) -> tuple[float, float, float]:
    """(longest step, longest validation + checkpoint, longest whole epoch) the run measured."""
    step = max(c.train_s / max(c.steps, 1) for c in budget.costs)
    validation = max(c.eval_s for c in budget.costs)
    epoch = max(c.train_s + c.eval_s for c in budget.costs)
    return step, validation, epoch


def test_the_lr_warms_up_by_steps_and_decays_to_zero_with_the_budget_spent():
    assert budget_factor(0, 0.0, 0.9, warmup_iters=4) == pytest.approx(0.25)
    assert budget_factor(3, 0.0, 0.9, warmup_iters=4) == pytest.approx(1.0)
    assert budget_factor(10, 0.5, power=1.0) == pytest.approx(0.5)  # linear: Li et al.
    assert budget_factor(10, 0.5, power=0.9) == pytest.approx(0.5**0.9)
    assert budget_factor(10, 1.0) == 0.0
    assert budget_factor(10, 1.7) == 0.0  # past the deadline: still the floor


def test_without_a_budget_the_loss_curve_and_lr_are_those_before_budgets_existed(shards, tmp_path):
    state = fit(tiny_params(epochs=4, warmup_iters=2), shards, tmp_path, "cpu", echo=None)

    assert state.budget is None
    assert [r["train_loss"] for r in state.history] == pytest.approx(
        [loss for loss, _ in BEFORE_BUDGET], abs=1e-6
    )
    assert [r["lr"] for r in state.history] == pytest.approx(
        [lr for _, lr in BEFORE_BUDGET], abs=1e-9
    )
    assert not any(key.startswith("budget") for r in state.history for key in r)
    assert "budget" not in torch.load(tmp_path / LAST, weights_only=True)


def test_a_budget_of_seconds_ends_at_its_deadline_with_the_lr_at_its_floor(steps_shards, tmp_path):
    minutes = 0.05  # 3 s
    lines: list[str] = []
    started = time.time()
    state = fit(
        tiny_params(epochs=MANY, time_budget_min=minutes, warmup_iters=4),
        steps_shards, tmp_path, "cpu", echo=lines.append, since=started,
    )  # fmt: skip
    wall = time.time() - started

    budget = state.budget
    step, validation, epoch = bounds(budget)
    assert budget.stopped_by == "budget" and 2 <= state.epoch < MANY
    # Not short of the deadline by more than an epoch, and not past it by more than one step
    # and its validation.
    assert minutes * 60 - epoch <= wall <= minutes * 60 + step + validation + 0.25
    lrs = [r["lr"] for r in state.history]
    assert lrs[-1] == 0.0  # the floor, at the last epoch's last step
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))  # never back up
    assert 0.0 < lrs[0] < 0.05
    head = "train: time budget 0.05 min (train.time_budget_min)"
    assert lines[0].startswith(head)
    # The deadline cuts the epoch then running, or the run ends between two epochs.
    assert lines[-1].startswith(
        (
            f"{head}: stopping after epoch {state.epoch}: another epoch",
            f"{head}: the deadline ended epoch {state.epoch} after",
        )
    )
    # The checkpoint holds the budget: spent time, progress and the measured epochs.
    saved = torch.load(tmp_path / LAST, weights_only=True)["budget"]
    assert saved["progress"] == 1.0 and len(saved["costs"]) == state.epoch
    assert saved["spent"] == pytest.approx(wall, abs=0.5)


def test_a_run_that_slows_down_is_cut_at_the_deadline_mid_epoch(steps_shards, tmp_path):
    minutes, slow_from, pause = 0.05, 1.5, 0.3
    lines: list[str] = []
    started = time.time()

    def slow_steps_later(line: str) -> None:
        # The echo of a step line runs inside the step: from 1.5 s on, every step takes 0.3 s
        # longer (another job took the machine), so an epoch no longer fits where it was planned.
        lines.append(line)
        if " step " in line and time.time() - started > slow_from:
            time.sleep(pause)

    state = fit(
        tiny_params(epochs=MANY, time_budget_min=minutes),
        steps_shards, tmp_path, "cpu", echo=slow_steps_later, since=started,
    )  # fmt: skip
    wall = time.time() - started

    budget = state.budget
    last = budget.costs[-1]
    fast = min(c.train_s / c.steps for c in budget.costs[:-1])
    assert last.train_s / last.steps > 2 * fast  # the slowed steps met the deadline
    # The deadline cut that epoch mid-way, or at its last step (no other step would fit).
    assert any("(cut at step" in line for line in lines) or last.whole
    step, validation, _ = bounds(budget)
    assert wall <= minutes * 60 + step + validation + 0.25
    assert state.history[-1]["lr"] == 0.0
    assert budget.stopped_by == "budget"


def test_a_budget_longer_than_the_epochs_need_ends_the_lr_at_the_last_epoch(shards, tmp_path):
    state = fit(tiny_params(epochs=3, time_budget_min=10.0), shards, tmp_path, "cpu", echo=None)

    assert state.epoch == 3 and state.budget.stopped_by == "epochs"
    lrs = [r["lr"] for r in state.history]
    assert lrs[-1] == 0.0 and lrs[0] > lrs[1] > 0.0
    assert [r["budget_planned_epochs"] for r in state.history[1:]] == [3, 3]


def test_a_resumed_run_spends_only_the_budget_left(steps_shards, tmp_path):
    minutes, crash_at = 0.06, 1.5  # 3.6 s; killed in the epoch running 1.5 s in
    params = tiny_params(epochs=MANY, time_budget_min=minutes)
    started = time.time()

    def crash_later(line: str) -> None:
        if " step " in line and time.time() - started > crash_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(params, steps_shards, tmp_path, "cpu", echo=crash_later, since=started)
    checkpoint = torch.load(tmp_path / LAST, weights_only=True)
    spent, done = checkpoint["budget"]["spent"], checkpoint["epoch"]
    lr = checkpoint["history"][-1]["lr"]
    assert 0.5 < spent <= crash_at + 0.5 and checkpoint["budget"]["progress"] < 1.0

    lines: list[str] = []
    restarted = time.time()
    state = fit(params, steps_shards, tmp_path, "cpu", echo=lines.append, since=restarted)
    wall = time.time() - restarted

    left = minutes * 60 - spent
    step, validation, epoch = bounds(state.budget)
    assert left - epoch - 0.25 <= wall <= left + step + validation + 0.25
    assert lines[0].startswith(f"train: resuming after epoch {done}")
    assert state.epoch > done and state.budget.stopped_by == "budget"
    lrs = [r["lr"] for r in state.history[done:]]
    assert lrs[0] <= lr and lrs[-1] == 0.0  # the schedule went on from where it was
    assert state.history[-1]["budget_spent_s"] == pytest.approx(minutes * 60, abs=epoch + 0.5)


def test_the_budget_and_what_it_allowed_reach_mlflow_and_one_log_line(
    steps_shards, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    params = tiny_params(epochs=MANY, time_budget_min=0.03, run_name="budgeted")
    state = fit(params, steps_shards, tmp_path / "out", "cpu", echo=None)
    summary = state.budget.summary(state.epoch)

    run_id = tracking.start_training_run(params, read_index(steps_shards), root=tmp_path)
    try:
        tracking.log_history(state.history)
        tracking.log_budget(summary)
    finally:
        tracking.end_run()

    run = mlflow.MlflowClient(tracking.tracking_uri(tmp_path)).get_run(run_id)
    assert run.data.params["train.time_budget_min"] == "0.03"
    assert run.data.metrics["budget_epochs"] == state.epoch
    assert run.data.metrics["budget_images_per_second"] == pytest.approx(
        summary["budget_images_per_second"]
    )
    assert run.data.metrics["budget_epoch_seconds"] > 0
    assert run.data.tags[tracking.BUDGET_STOPPED_BY_TAG] == "budget"
    line = budget_line(summary)
    assert line.startswith(f"train: time budget 0.03 min: {state.epoch} epoch(s) in ")
    assert "images/s" in line and line.endswith("stopped by the budget")


def test_a_machine_slower_than_the_reference_leaves_the_later_stages_their_share():
    # 10 minutes, of which the stages after training take 1.5 at the reference 10 images/s.
    budget = TimeBudget(10, MANY, after_minutes=1.5, reference_ips=10.0)
    assert budget.seconds == 600  # nothing measured yet: the whole budget

    budget.costs = [EpochCost(50, 5, 10, images_per_second=10.0)]
    assert budget.slowdown() == 1.0 and budget.seconds == 600  # the reference pace
    budget.costs = [EpochCost(50, 5, 10, images_per_second=20.0)]
    assert budget.seconds == 600  # faster: training keeps its budget, never more

    # 4x slower: the later stages are expected to take 6 minutes, 4.5 more than at the
    # reference, and training ends that much earlier.
    budget.costs = [EpochCost(200, 20, 10, images_per_second=2.5)]
    assert budget.slowdown() == 4.0 and budget.seconds == 600 - 4.5 * 60
    assert budget.summary(1)["budget_deadline_min"] == 5.5
    reason = budget.stop_reason(1)
    assert "4.5 min of it left to the later stages: training ran 4.0x slower" in reason
    assert "would need" not in reason  # the share fits: no overrun foretold
    line = budget_line(budget.summary(1))
    assert "ended 4.5 min early for the later stages (training 4.0x slower" in line

    # 11x slower: the later stages would need 15 more minutes; training keeps half its
    # budget (a model), and the line says the total will be overrun.
    budget.costs = [EpochCost(200, 20, 10, images_per_second=10 / 11)]
    assert budget.seconds == 300
    assert "(they would need 15.0; training keeps half its budget, so the whole dvc repro " in (
        budget.stop_reason(1)
    )

    no_reference = TimeBudget(10, MANY, after_minutes=2)
    no_reference.costs = [EpochCost(200, 20, 10, images_per_second=2.5)]
    assert no_reference.seconds == 600


def test_a_machine_that_slows_down_mid_epoch_moves_the_deadline_at_once_and_meets_it():
    clock = [0.0]
    # 10 minutes, 2 of them the later stages' at 10 images/s; 10 images a step.
    budget = TimeBudget(10, MANY, after_minutes=2, reference_ips=10.0, batch_images=10,
                        agree=lambda _: clock[0])  # fmt: skip
    budget.next_epoch(0)
    clock[0] = 1.0
    assert not budget.step(1, 1000)
    assert budget.seconds == 600  # one step says nothing of the pace yet
    clock[0] = 3.0  # 10 images in 2 s after the first step: 5 images/s, 2x slower
    assert not budget.step(2, 1000)
    assert budget.seconds == 600  # one slow batch is not yet a slow machine
    for step in range(3, 7):
        clock[0] = 1.0 + 2.0 * (step - 1)
        assert not budget.step(step, 1000)
    assert budget.seconds == 600 - 120  # 5 steps at 5 images/s: the deadline moves
    assert budget.progress == pytest.approx(11.0 / 480)  # the LR follows the moved deadline
    # On at 2 s a step (still 5 images/s): the step after which another would pass the moved
    # deadline (480 s) is the last, with the LR at its floor.
    step = 6
    while True:
        step += 1
        clock[0] = 1.0 + 2.0 * (step - 1)
        if budget.step(step, 1000):
            break
    assert step == 240 and clock[0] == 479.0
    assert budget.progress == 1.0
