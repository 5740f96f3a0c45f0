"""The method layer: the NCA, PCA-Otsu and its read-outs, the baselines, training k folds,
evaluation, fold models and their files, prediction. Pure torch, numpy, captum, scikit-image
and scikit-learn: neither Ray nor MLflow."""
