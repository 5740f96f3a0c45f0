"""From features to masks: PCA + Otsu with the sign rule (pca_otsu.py), connected components,
the threshold baselines, and the read-out engine over an NCA's states (states.py)."""
