"""The data pipeline: formats, the cached index, encoding, packing and loading.

``load_dataset`` validates a data file through the cached index and returns its usable samples
and the data report; ``SampleEncoder`` turns a sample into model inputs; ``SwapDataset``,
``EpochSampler`` and ``Collator`` feed the Trainer; ``Packs`` packs samples into rows.
"""

from .encoding import IGNORE, ImageRows, SampleEncoder, TooLong
from .formats import DataError, RowError, Sample, parse_row
from .index import build_index
from .loader import Collator, EpochSampler, SwapDataset, padding_fraction
from .packing import Packs
from .samples import DataReport, IndexedSamples, load_dataset

__all__ = [
    "IGNORE",
    "Collator",
    "DataError",
    "DataReport",
    "SampleEncoder",
    "EpochSampler",
    "ImageRows",
    "IndexedSamples",
    "Packs",
    "RowError",
    "Sample",
    "SwapDataset",
    "TooLong",
    "build_index",
    "load_dataset",
    "padding_fraction",
    "parse_row",
]
