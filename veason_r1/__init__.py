"""Veason-R1: reinforcing video reasoning segmentation to think before it segments."""

__version__ = "0.1.0"
