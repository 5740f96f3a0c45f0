"""Training k folds: the execution plan (plan.py), the loop (loop.py), the CAM baseline CNNs
(cnn.py), and train_folds / cross_validate (train.py)."""
