"""Samplers: stage 1 (LSDM, DDIM), stage 2 (refiner) and the two-stage generator."""
