"""Scoring: every IoU (metrics.py), evaluation beside the baselines, Scores, fold models and
their files, and a configuration's ensemble of folds."""
