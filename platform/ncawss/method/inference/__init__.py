"""Predicting new images (masks, classes, a label-free quality score) and mask galleries."""
