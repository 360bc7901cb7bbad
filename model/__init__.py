"""The HyperHuman trainer (arXiv 2310.08579), built from diffusers' own blocks, laid out the way
diffusers is:

* :mod:`model.models`: the networks: the Latent Structural Diffusion Model (``lsdm``, §3.2), the
  Structure-Guided Refiner's ControlNet and embedders (``refiner``, §3.3), and the frozen SD-2 and
  SDXL parts they run beside (``sd2``, ``sdxl``);
* :mod:`model.schedules`: zero-terminal-SNR schedules and v-targets (§3.2, Eq. 4);
* :mod:`model.sampling`: the stage-1 sampler, the refiner sampler and the two-stage generator
  behind ``humanverse sample``;
* :mod:`model.training`: one Ray Train loop for both stages, the per-stage tasks and objectives, the
  training reader over a HumanVerse dataset, the VAE-latent cache and checkpoints;
* :mod:`model.evaluation`: the paper's §5 protocol (test sets, FID/KID/CLIP/pose metrics, the report).

``model`` imports ``humanverse`` and never ``pipelines``.
"""
