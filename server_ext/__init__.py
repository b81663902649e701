"""Triton server extensions for freshrec: the tritonserver launcher and Python-backend models."""
