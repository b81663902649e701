"""freshrec: real-time transformer recommendations served on NVIDIA Triton."""

__version__ = "0.1.0"
