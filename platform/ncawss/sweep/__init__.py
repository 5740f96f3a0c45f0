"""The sweep layer: search spaces (space), Ray Tune over configurations (tuner, trial), Ray Train
fold workers (worker, process_group), the CAM baselines' CNN cache, Tune's events in MLflow
(callback) and the end of a sweep (summary). Importing this package imports no Ray; its
modules do, except space, plan and metrics."""
