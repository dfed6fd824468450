"""deployzoo: trained PyTorch vision model -> exported, built, scored and benchmarked inference engine."""

__version__ = "0.1.0"
