"""sst: sparse neural-network training research framework."""

__version__ = "0.1.0"
