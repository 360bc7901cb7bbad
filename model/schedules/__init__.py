"""Diffusion schedules and targets (zero terminal SNR, v-prediction)."""
