"""BLS engine: runs the exported models from inside a Python-backend model."""

from __future__ import annotations

from typing import Any

from freshrec.server_ext.tensors import from_pb, to_pb

from freshrec.contract import BY_NAME


class ModelCallError(RuntimeError):
    """A composing model returned an error."""


class BlsEngine:
    """`version`: the tower version every call names, the pipeline model's own (while a rollout
    has two versions loaded, version N's pipeline keeps calling version N's towers)."""

    def __init__(self, pb, version: int = -1) -> None:
        self.pb = pb
        self.version = int(version)

    def run(self, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """numpy or torch in (torch on a GPU travels by DLPack); numpy out, or torch where the
        output lies on a GPU."""
        contract = BY_NAME[model]
        request = self.pb.InferenceRequest(
            model_name=model,
            model_version=self.version,
            requested_output_names=contract.output_names,
            inputs=[to_pb(self.pb, name, inputs[name]) for name in contract.input_names],
        )
        response = request.exec()
        if response.has_error():
            raise ModelCallError(f"{model}: {response.error().message()}")
        return {name: from_pb(self.pb.get_output_tensor_by_name(response, name)) for name in contract.output_names}
