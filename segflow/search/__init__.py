"""Auto-DeepLab architecture search: supernet.py (cell and network level), decode.py (cell
decoding and Viterbi over beta), loop.py (first-order DARTS, plain PyTorch), run.py (the search
launched in this process or on the Ray Train launcher of segflow.train.distributed),
outputs.py (genotype, CSV histories, heat maps). The search stage is segflow.stages.search."""
