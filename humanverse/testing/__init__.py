"""Test helpers that ship with the package: tiny randomly initialised models of the real classes
(:mod:`humanverse.testing.tiny_models`, with their tokenizers) and synthetic images and rows
(:mod:`humanverse.testing.synthetic`).

Tests, the offline demo and CI load these through the same ``from_pretrained`` code as real
checkpoints; ``pipelines`` and ``model`` use them to build the tiny stand-ins of their own classes.
"""
