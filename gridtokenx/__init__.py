"""GridTokenX Edge: the root command, the demo, and the small runtime plumbing all components share."""

__version__ = "0.1.0"
