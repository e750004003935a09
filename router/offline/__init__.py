"""Offline comparison on a labelled dataset: `router compare` and `router make-dataset`."""
