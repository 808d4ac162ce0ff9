"""StreamPro-RL: train video models to decide when to speak in a live stream."""

__version__ = "0.1.0"
