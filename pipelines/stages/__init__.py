"""The builder stages, one module per stage; what they share lives in :mod:`pipelines.stages.base`
and :mod:`pipelines.stages.loading`."""
