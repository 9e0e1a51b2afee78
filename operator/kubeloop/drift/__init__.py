"""Drift statistics and reference profiles, shared by the trainer, the model server and the operator."""
