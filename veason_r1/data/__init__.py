"""Data layer: masks, frame sources, benchmark readers, sampling, the synthetic benchmark, validation."""
