"""The method layer, pure torch, numpy, captum, scikit-image and scikit-learn (neither Ray nor
MLflow), in rooms by concern, each importing only those listed before it:

- config.py, baselines.py, images.py: the typed configuration, the baselines' names, images
  resized, normalised and grouped by size;
- nca/: the NCA classifier, one model or k folds stacked; torch and Triton steps;
- readout/: PCA, Otsu and the sign rule, connected components, threshold baselines, the
  read-out engine that turns an NCA's states into masks;
- training/: the execution plan for k folds, the training loop, CAM baseline CNNs, train_folds;
- scoring/: every IoU (metrics.py), evaluation beside the baselines, scores, fold models and
  their files, the ensemble of a configuration's folds;
- inference/: predicting new images with a quality score, mask galleries.
(training/ and scoring/ meet once: train.py evaluates through scoring/, and scoring/ builds
fold models from training/'s CNNs.)
"""
