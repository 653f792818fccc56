"""OneDC: a one-step diffusion image codec (clean-room re-implementation).

Submodules are imported lazily so that `import onedc_lib` and the CLI stay fast.
"""
__version__ = "0.1.0"
