"""Evaluation: confusion-matrix metrics, inference modes, the served path (serving.py), a split
predicted (predict_split.py) and refined by the CRF (crf_split.py), the gate's bootstrap, flat
scores, speed, and the report package. The crf_tune and evaluate stages are in segflow.stages."""
