"""Inference for users and servers: Predictor, host pre/post-processing, export,
drawing."""
