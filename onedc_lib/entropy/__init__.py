"""Entropy coding: coding tables, FSQ, the four-step context model and the rANS coders."""
