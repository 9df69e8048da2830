"""Post-processing of network outputs: the fully connected CRF and probability storage.

:mod:`.crf_params` (the CRF settings and crf_tune's decision), :mod:`.crf` (the CRF of one
image), :mod:`.probs` (a split's probabilities on disk). Nothing is imported here: params.yaml's
schema imports :mod:`.crf_params` and must not pull in pydensecrf on the way.
"""
