"""Evaluation: confusion-matrix metrics, inference modes, reports."""
