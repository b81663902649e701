"""Triton Python-backend adapter hosting one ONNX model in onnxruntime (embedded flavour)."""

import triton_python_backend_utils as pb_utils

from freshrec.server_ext.onnx_model import OnnxModel


class TritonPythonModel:
    def initialize(self, args):
        self.model = OnnxModel(args, pb_utils)

    def execute(self, requests):
        return self.model.execute(requests)
