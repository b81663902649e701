"""Triton Python-backend adapter hosting one ONNX model in onnxruntime (embedded flavour)."""

import triton_python_backend_utils as pb_utils

from freshrec.server_ext.loading import load_yielding
from freshrec.server_ext.onnx_model import OnnxModel


class TritonPythonModel:
    def initialize(self, args):
        # At the lowest CPU priority: a version loading beside a serving one leaves it the cores.
        self.model = load_yielding(lambda: OnnxModel(args, pb_utils))

    def execute(self, requests):
        return self.model.execute(requests)
