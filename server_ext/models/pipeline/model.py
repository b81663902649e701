"""Triton Python-backend adapter for the public models (`recommend`, `ingest_events`,
`upsert_items`, `forget_user`): the same file serves each; the model's name picks the handler in
freshrec.server_ext.service, where the logic lives."""

import triton_python_backend_utils as pb_utils

from freshrec.server_ext.loading import load_yielding
from freshrec.server_ext.service import Service


class TritonPythonModel:
    def initialize(self, args):
        # At the lowest CPU priority: a version loading beside a serving one leaves it the cores.
        self.service = load_yielding(lambda: Service(args, pb_utils))
        self.handler = getattr(self.service, args["model_name"])

    def execute(self, requests):
        return self.service.handle(requests, self.handler)

    def finalize(self):
        self.service.close()
