"""``segflow check-params``: what params.yaml names must exist, checked without running a stage.

The schema (segflow/config.py) checks types and bounds; it cannot know whether the model
registry has ``train.model``, whether a backbone or model option is real, or whether
``dataset.root`` holds the layout its adapter reads. These checks say it up front, one line per
problem, each naming the field and the rule. (The dataset part is the check stage's own,
:func:`segflow.stages.check.dataset_problems`, which ``dvc repro`` runs before ingest.)
"""

from __future__ import annotations

from pathlib import Path

from segflow.config import Params, TrainParams, load_params
from segflow.errors import SegflowError
from segflow.stages.check import dataset_problems


def check_params(path: Path) -> Params:
    """Load ``path`` against the schema, then check the models and the dataset it names.

    Every problem is reported, not just the first: one SegflowError with one line each.
    """
    params = load_params(path)
    problems = [
        *_model_problems(path, "train", params.train),
        *(
            problem
            for n, choice in enumerate(params.tune.models)
            for problem in _model_problems(
                path, f"tune.models.{n}", params.train.model_copy(update=choice.model_dump())
            )
        ),
        *dataset_problems(path, params),
    ]
    if problems:
        raise SegflowError("\n".join(problems))
    return params


def _model_problems(path: Path, field: str, train: TrainParams) -> list[str]:
    """Build the model once (two classes): an unknown name, backbone or option fails here."""
    from segflow.models import build

    try:
        build(
            train.model,
            2,
            backbone=train.backbone,
            output_stride=train.output_stride,
            pretrained=train.pretrained,
            **train.model_options,
        )
    except SegflowError as exc:
        return [f"{path}: {field}: {exc}"]
    return []
