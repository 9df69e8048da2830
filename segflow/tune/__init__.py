"""Ray Tune sweeps: training hyper-parameters (train_search) and dense-CRF settings (crf_search),
and the file the train sweep hands to the train stage (best_params)."""
