"""The application layer: one module per DVC stage, each the whole orchestration of its stage.

A stage module reads params (``main(params)``), calls the library (data, models, train,
evaluate, postprocess, tune, search, lifecycle), writes the stage's outs as dvc.yaml declares
them (atomically) and opens the stage's MLflow run. It is the only layer that knows the whole
pipeline; ``pipelines/<stage>.py`` is ``run_stage(main)`` around it, and nothing below imports
from here. :mod:`.runner` is what every stage shares.
"""
