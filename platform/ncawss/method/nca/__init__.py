"""The NCA classifier (model.py), one model or k folds stacked, and its Triton step (opt-in)."""
