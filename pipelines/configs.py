"""The builder's config helpers: the typed YAML loader lives in :mod:`humanverse.config` (shared
with the trainer, which must not import ``pipelines``)."""

from humanverse.config import ConfigError, check, from_dict, load_yaml, to_dict

__all__ = ["ConfigError", "check", "from_dict", "load_yaml", "to_dict"]
