"""Triton Python-backend adapter for `recommend`; the logic lives in freshrec.server_ext.service."""

import triton_python_backend_utils as pb_utils

from freshrec.server_ext.service import Service


class TritonPythonModel:
    def initialize(self, args):
        self.service = Service(args, pb_utils)

    def execute(self, requests):
        return self.service.handle(requests, self.service.recommend)

    def finalize(self):
        self.service.close()
