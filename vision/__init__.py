"""The supervised paradigm: image data sets with exact masks and the classifiers CAMAL trains (docs/vision.md)."""
