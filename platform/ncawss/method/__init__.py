"""The method layer (torch, numpy, scipy, scikit-image, scikit-learn, pyarrow, Pillow, pydantic,
PyYAML and captum; neither Ray nor MLflow), in rooms by concern, each importing only rooms listed
before it (tests/test_layering.py):

- config.py, baselines.py, images.py: the typed configuration, every baseline's name, images
  resized, normalised and grouped by size;
- nca/: the NCA classifier, one model or k folds stacked; its torch and Triton steps;
- readout/: PCA, Otsu and the sign rule, connected components, the threshold baselines, and the
  read-out engine that turns an NCA's states into masks;
- training/: the execution plan for k folds, the training loop, the CAM baseline CNNs;
- scoring/: every IoU (metrics.py), evaluation beside the baselines, Scores, fold models and
  their files, a configuration's ensemble of folds;
- prepared.py: a dataset prepared once for many trainings (a sweep's): its images at each
  training size, masks packed, the thresholds' IoU computed, test folds read in chunks;
- train.py: k folds trained and scored start to end (train_folds, train_fold, cross_validate);
- inference/: predicting new images with a quality score, mask galleries.
"""
