"""The model lifecycle after evaluation: register, gate, retrain, schedule.

- :mod:`.registration`: the MLflow Model Registry (log and register the served model, aliases,
  loading a registered model's checked artifacts for ``segflow predict`` and the gate).
- :mod:`.pyfunc_model`: the registered model's code (logged as a file, "models from code").
- :mod:`.gate`: the promotion gate: the champion re-scored on the same images of the decision
  split (dev, else val; never test), the paired bootstrap, the decision.
- :mod:`.retrain` and :mod:`.schedule`: the scheduled retraining flow and its schedulers.

The register stage (:mod:`segflow.stages.register`) calls the gate and the registry. Calls go
one way: gate -> registration, evaluate, models; retrain -> registration (and DVC, which runs
the stages in their own processes). Nothing here imports a stage.
"""
