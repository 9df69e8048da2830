"""The model lifecycle after evaluation: register, gate, retrain, schedule.

- :mod:`.registration`: the MLflow Model Registry (log and register the served model, aliases,
  loading a registered model for ``segflow predict``), and the store check.
- :mod:`.pyfunc_model`: the registered model's code (logged as a file, "models from code").
- :mod:`.gate`: the promotion gate: the champion re-scored on the same test images, the paired
  bootstrap, the decision.
- :mod:`.register`: the register stage's work, calling the two above.
- :mod:`.retrain` and :mod:`.schedule`: the scheduled retraining flow and its schedulers.

Calls go one way: register -> gate -> evaluate/models; register -> registration. Nothing here is
called back from below.
"""
