"""The builder stages, one module per stage; what they share is in :mod:`pipelines.stages.base` and :mod:`pipelines.stages.loading`."""
