"""The HumanVerse builder (HyperHuman §4) on Ray Data: web image shards in, an annotated HumanVerse
dataset out.

* :mod:`pipelines.readers`: source shards per input format (image folders, webdataset tars,
  Parquet with image bytes);
* :mod:`pipelines.stages`: one module per stage, cheapest first (decode, resolution, detect,
  person filter, aesthetic, outpaint, pose, depth, normal, caption); :mod:`pipelines.annotators`:
  model backends that are not plain ``from_pretrained`` classes (Omnidata, MMPose);
* :mod:`pipelines.config` (the typed ``BuildConfig``), :mod:`pipelines.plan` (what to do, before
  Ray starts), :mod:`pipelines.steps` (the config as a list of steps), :mod:`pipelines.build` (the
  Ray Data graph and the ``ray job submit`` entrypoint), :mod:`pipelines.sink` (exactly-once writes);
* :mod:`pipelines.download`: URL lists to shards with img2dataset.

``pipelines`` imports ``humanverse`` and never ``model``. See docs/architecture.md.
"""
