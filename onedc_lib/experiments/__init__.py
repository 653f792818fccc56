"""Experiments: runs that combine rooms below them (train then evaluate, evaluate then draw the figures), so that
evaluation never trains and never draws."""
