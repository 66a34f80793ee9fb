"""Experiments: sweeps over the workspace's choices, tracked runs (run folders + MLflow), reports."""
