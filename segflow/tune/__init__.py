"""Ray Tune sweeps: training hyper-parameters (train_search) and dense-CRF settings (crf_search)."""
