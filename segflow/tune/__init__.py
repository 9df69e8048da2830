"""Ray Tune sweeps (dense-CRF parameters: crf_search)."""
