"""Which model a report scores: the header a reader checks before any number.

A report's figures mean something only next to the model they score: the architecture and
backbone, how long it trained and which epoch's weights were kept, the MLflow run that holds
it, the git commit and the shards it trained on, and when it was scored. :class:`Provenance`
holds these and renders them as (label, text) rows; a fact that was not recorded reads "not
recorded" rather than a guess.

The registry version and its aliases do not exist yet when the evaluate stage writes the
report: the register stage registers the model afterwards and the gate moves the aliases. So
the report in reports/eval/ says where they are (:data:`REGISTRY_PENDING`: reports/registry.json),
and the copy the register stage logs to the MLflow run is rendered again with them filled in
(:func:`segflow.evaluate.report.write.render_registered`), so the run's report names its version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

NOT_RECORDED = "not recorded"
REGISTRY_PENDING = (
    "not yet registered when this report was written: the register stage records the version "
    "and its aliases in reports/registry.json and logs this report, with them, to the MLflow "
    "run (artifacts evaluation/report/)"
)


@dataclass(frozen=True)
class Provenance:
    """The model a report scores and where it came from (None: not recorded)."""

    model: str | None = None
    backbone: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    #: The split the best epoch was chosen on (``val`` or ``dev``).
    selected_on: str | None = None
    mlflow_run_id: str | None = None
    mlflow_run_name: str | None = None
    git_commit: str | None = None
    dataset: str | None = None
    shards_hash: str | None = None
    #: When the report was written, e.g. ``2026-03-01 14:05 UTC``.
    evaluated: str | None = None
    #: ``segflow-camvid version 3 (aliases at registration: challenger, champion)``; None
    #: until the register stage renders its copy.
    registry: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        """(label, text) rows of the report's header, in reading order."""
        model = self.model or NOT_RECORDED
        if self.model and self.backbone:
            model += f", backbone {self.backbone}"
        if self.epochs is None:
            training = NOT_RECORDED
        else:
            training = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
            if self.best_epoch is not None:
                on = f" by {self.selected_on} mIoU" if self.selected_on else ""
                training += f"; the weights scored are epoch {self.best_epoch}'s (best{on})"
        run = self.mlflow_run_id or NOT_RECORDED
        if self.mlflow_run_id and self.mlflow_run_name:
            run += f" ({self.mlflow_run_name})"
        data = self.dataset or NOT_RECORDED
        if self.shards_hash:
            data += f", shards content hash {self.shards_hash}"
        return [
            ("model", model),
            ("training", training),
            ("MLflow run", run),
            ("git commit", self.git_commit or NOT_RECORDED),
            ("data", data),
            ("evaluated", self.evaluated or NOT_RECORDED),
            ("registry", self.registry or REGISTRY_PENDING),
        ]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Provenance:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def registry_text(name: str, version: str | int, aliases: list[str]) -> str:
    """How the registered copy of a report names its version."""
    held = ", ".join(aliases) if aliases else "none"
    return f"{name} version {version} (aliases at registration: {held})"
