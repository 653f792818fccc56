"""Evaluation: metrics, the runner, classical baselines, BD-rate."""
