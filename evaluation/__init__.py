"""Offline comparison on a labelled dataset: `evaluation compare` and `evaluation make-dataset`."""
