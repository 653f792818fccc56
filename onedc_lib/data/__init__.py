"""Data: sample photographs shipped with the dependencies (more loaders arrive with the training issue)."""
