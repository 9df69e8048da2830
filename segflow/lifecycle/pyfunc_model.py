"""The registered model's code, logged as a file ("models from code"): nothing is unpickled.

MLflow runs this file to load the model; the weights come from the checkpoint artifact, read
with ``torch.load(weights_only=True)``, and everything else from JSON artifacts: the serving
spec that evaluate scored with (:class:`segflow.evaluate.serving.ServingSpec`) and the class
table. A model logged this way does exactly what evaluate measured, on a GPU when there is one.

This is for MLflow's own loaders (``mlflow models serve``, ``mlflow.pyfunc.load_model``): they
import this file and the bundled ``code/segflow`` *from the artifact store*, so whoever can write
to the store decides what runs there. segflow's own commands never load it: they check the
artifacts' digests and build the network with the installed segflow
(:func:`segflow.lifecycle.registration.fetch_checked`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.models import set_model

# MLflow suggests type hints on predict() for its own input validation; the served model checks
# its input itself (one H x W x 3 uint8 image), and the hint would print on every load.
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """H x W x 3 uint8 RGB in, H x W uint8 class ids out, at the input's size."""

    def load_context(self, context) -> None:
        from segflow.evaluate.serving import ServingSpec, load_predictor

        serving = Path(context.artifacts["serving"])
        spec = ServingSpec.from_dict(json.loads(serving.read_text()), str(serving))
        self.classes = json.loads(Path(context.artifacts["classes"]).read_text())
        self.predictor = load_predictor(context.artifacts["checkpoint"], spec)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        return self.predictor.labels(from_json(model_input))

    @property
    def last_timing(self) -> dict[str, float]:
        """Wall time of the last prediction in ms: ``ms`` (the served path, CRF included when
        on) and ``ms_network`` (resize, normalise and the network's inference)."""
        return self.predictor.last_timing


def from_json(image):
    """JSON has no uint8: an image sent to ``mlflow models serve`` (and the input example MLflow
    checks when the model is logged) arrives as an integer array. One whose values all lie in
    0..255 is the uint8 image it was; anything else goes to the model's own check unchanged."""
    if (
        isinstance(image, np.ndarray)
        and image.dtype.kind in "iu"
        and image.dtype != np.uint8
        and image.size
        and image.min() >= 0
        and image.max() <= 255
    ):
        return image.astype(np.uint8)
    return image


set_model(SegmentationModel())
