"""Search methods (registered in :mod:`leanvision.search.registry`): one file per method."""

from . import dcnas, gan_c2f, hit_detector, hournas, oneshot, standalone, vit_resnas  # noqa: F401  (importing registers them)
