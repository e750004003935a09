"""Helpers shared by the test packages: clips, OIP requests, server processes."""
