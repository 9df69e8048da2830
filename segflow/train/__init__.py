"""Training: the Ray-free core loop and what it is made of, and the one Ray Train launcher.

loop.py (plain PyTorch: epochs, validation, ``fit``), state.py (what a checkpoint holds),
precision.py (fp32/bf16/fp16 policy), collectives.py (all-reduces across DDP ranks), losses,
schedules, ema, sync_bn; distributed.py (the Ray Train launcher train and search share), run.py
(training launched on it or in this process), resume.py (which run the train stage continues),
outputs.py (the train stage's files).
"""
