"""HumanVerse: the dataset contract of the open HyperHuman system (arXiv 2310.08579).

Format, codecs, exactly-once shard commits, readers and skeleton rendering. Heavy libraries
(torch, transformers, diffusers, ray) are imported lazily, only by the functions that need them.
"""

from humanverse.dataset import HumanVerseDataset, open
from humanverse.schema import FORMAT_VERSION, REJECT_REASONS, REJECT_SCHEMA, data_schema
from humanverse.shards import ShardSink, ShardWriter, read_log
from humanverse.skeleton import flip_keypoints, render_skeleton

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION", "REJECT_REASONS", "REJECT_SCHEMA", "HumanVerseDataset", "ShardSink", "ShardWriter",
    "data_schema", "flip_keypoints", "open", "read_log", "render_skeleton", "__version__",
]
