"""OneDC: a one-step diffusion image codec (clean-room re-implementation).

`build_model(preset, **overrides)`, `load_model(name_or_path=None)` and `load_release_checkpoint(folder)` are
imported lazily so that `import onedc_lib` and the CLI stay fast.
"""
__version__ = "0.1.0"

_LAZY = {"build_model", "load_model", "load_release_checkpoint", "save_model"}


def __getattr__(name):
    if name in _LAZY:
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'onedc_lib' has no attribute {name!r}")
