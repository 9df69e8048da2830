"""Auto-DeepLab architecture search: supernet.py (cell and network level), decode.py (cell
decoding and Viterbi over beta), loop.py (first-order DARTS, plain PyTorch), run.py (local and
Ray Train launchers, checkpoints), outputs.py (genotype, plots, MLflow)."""
