"""Experiments: sticky assignment to arms, and shadow copies with agreement tracking."""
