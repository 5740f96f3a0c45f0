"""Training k folds: the execution plan (plan.py), the loop (loop.py) and the CAM baseline
CNNs (cnn.py). train_folds, which also scores the folds, is one room up (method/train.py)."""
