"""Request handlers behind the thin model.py adapters: parse -> delegate to the pipeline ->
convert back. A bad request gets its own error response; it never fails the others."""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from freshrec.server_ext import tensors as T
from freshrec.server_ext.bls import BlsEngine, ModelCallError
from freshrec.server_ext.metrics import TritonStats
from threadpoolctl import threadpool_limits

from freshrec.config import DeployConfig, ModelConfig
from freshrec.contract import CARD_FILE, DEFAULT_K, PIPELINE_RUNS, SETTINGS_FILE, TOKENIZER_FILE, TOPICS_FILE
from freshrec.serving.engines import OnnxEngine
from freshrec.serving.pipeline import Cancelled, InvalidInput, Recommender, Unsupported
from freshrec.store import Event, StoreUnavailable, open_store

RECALL_WARN = 0.95  # a self-checked index recall below this is logged as a warning at load
FORGET_KEY_ENV = "FRESHREC_FORGET_KEY"  # the key forget_user requires (`freshrec serve` sets its admin key)


class KeyRefused(Exception):
    """A forget_user request without the server's forget key. Triton 2.51's Python backend has
    no PERMISSION_DENIED code: it answers INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400), which a
    client does not retry."""


class Disabled(Exception):
    """forget_user on a server started without a forget key (UNSUPPORTED: gRPC UNIMPLEMENTED)."""


def check_key(sent: str, configured: str) -> None:
    """Raises unless a forget key is configured and `sent` equals it (constant-time compare)."""
    if not configured:
        raise Disabled(f"forget_user is disabled on this server: start it with {FORGET_KEY_ENV} set (`freshrec serve` sets its admin key)")
    if not hmac.compare_digest(sent.encode(), configured.encode()):
        raise KeyRefused("forget_user refused: the key is not this server's forget key")


def device_of(args: dict) -> Any:
    """The instance's device: the GPU Triton placed it on (KIND_GPU, a torch.device), else "cpu".
    A GPU instance whose torch sees no CUDA device fails to load rather than serve from the CPU.
    A CPU instance never imports torch: its request path is numpy and onnxruntime, and torch
    would add ~200 MiB to every Python-backend process."""
    if args.get("model_instance_kind") != "GPU":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{args.get('model_name', 'model')}: Triton placed this instance on GPU "
            f"{args.get('model_instance_device_id', 0)} (KIND_GPU), but torch {torch.__version__} in this Python "
            "sees no CUDA device: install a CUDA build of torch, or serve a CPU repository (`freshrec export --device cpu`)"
        )
    return torch.device("cuda", int(args.get("model_instance_device_id", 0)))


class Service:
    """One per model instance: the store connection, the item index and the engine that runs the
    towers (BLS requests, or onnxruntime in this process)."""

    def __init__(self, args: dict, pb) -> None:
        self.pb = pb
        self.name = args["model_name"]
        model_dir = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((model_dir / SETTINGS_FILE).read_text())
        cfg = ModelConfig.from_dict(settings["model"])
        # The state URL, the retrieval index (freshrec.index), how the towers run (a BLS request
        # per stage, or onnxruntime in this process), the graph cache and the thread count are
        # per deployment: the FRESHREC_* environment overrides what the build wrote.
        deploy = DeployConfig.served(settings["deploy"], os.environ)
        # The version folder Triton loaded is the version (its item vectors, its tower graphs).
        deploy = dataclasses.replace(deploy, version=int(args["model_version"]))
        device = device_of(args)
        if deploy.threads > 0:  # the instances share the cores: one pool each, not one per core each
            threadpool_limits(limits=deploy.threads, user_api="blas")
            if device != "cpu":  # torch runs the array work of a GPU instance
                import torch

                torch.set_num_threads(deploy.threads)
        tokenizer = None
        if (model_dir / TOKENIZER_FILE).exists():
            from freshrec.models.tokenizer import Tokenizer

            tokenizer = Tokenizer(model_dir, cfg.text.max_tokens)
        topics = None
        if (model_dir / TOPICS_FILE).exists():  # beside recommend (explanations) and upsert_items (new items' mixtures)
            from freshrec.models.topics import TopicModel

            topics = TopicModel.load(model_dir / TOPICS_FILE)
        self.forget_key = os.environ.get(FORGET_KEY_ENV, "") if self.name == "forget_user" else ""
        self.stats = TritonStats(pb, self.name)
        card = Path(args["model_repository"]).parent / "recommend" / args["model_version"] / CARD_FILE
        self.stats.model_card(deploy.version, json.loads(card.read_text()) if card.exists() else None)
        if deploy.resolved_engine() == "inprocess":
            cuda = None if device == "cpu" else device.index
            engine = OnnxEngine(Path(args["model_repository"]).parent, args["model_version"], deploy.ort_threads, cuda)
            engine.load(*PIPELINE_RUNS[self.name])  # at model load, not on the first request
        else:
            engine = BlsEngine(pb, deploy.version)
        # The item matrices and a graph index are made once per catalog and mapped by every instance (freshrec.index.cache).
        self.recommender = Recommender(open_store(deploy.state), engine, tokenizer, cfg, deploy, device, stats=self.stats,
                                       index_cache=deploy.index_cache_dir(), topics=topics)  # fmt: skip
        if self.name == "recommend":
            # Load the catalog into the index while the model loads, not on the first request:
            # a graph index over 1M items takes minutes to build (docs/benchmarks/index.md).
            t0 = time.perf_counter()
            try:
                self.recommender.refresh_index()
            except StoreUnavailable as exc:  # requests retry the refresh; the store may come up later
                pb.Logger.log_warn(f"{self.name}: state store unavailable at start, index loads on first request: {exc}")
            else:
                index = self.recommender.index
                recall = index.recall
                pb.Logger.log_info(f"{self.name}: retrieval index {index.serving_kind} ({deploy.index!r}) over {len(index):,} items, "
                                   f"loaded in {time.perf_counter() - t0:.1f} s"
                                   + (f", self-checked recall@200 {recall:.4f}" if recall is not None else ""))  # fmt: skip
                if recall is not None and recall < RECALL_WARN:
                    pb.Logger.log_warn(f"{self.name}: retrieval index recall@200 {recall:.4f} is below {RECALL_WARN} on sampled "
                                       "queries; FRESHREC_INDEX=sq8 or exact searches this catalog exhaustively")  # fmt: skip

    def close(self) -> None:
        self.recommender.store.close()

    # -- error mapping ------------------------------------------------------------------------
    def _error(self, exc: BaseException):
        pb = self.pb
        if isinstance(exc, Cancelled):
            return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.CANCELLED))
        if isinstance(exc, (InvalidInput, KeyRefused)):
            return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.INVALID_ARG))
        if isinstance(exc, (Disabled, Unsupported)):
            return pb.InferenceResponse(error=pb.TritonError(str(exc), pb.TritonError.UNSUPPORTED))
        if isinstance(exc, StoreUnavailable):
            self.stats.store_error()
            pb.Logger.log_warn(f"{self.name}: state store unavailable: {exc}")
            return pb.InferenceResponse(error=pb.TritonError("state store unavailable; retry later", pb.TritonError.UNAVAILABLE))
        if isinstance(exc, ModelCallError):
            pb.Logger.log_error(f"{self.name}: {exc}")
            return pb.InferenceResponse(error=pb.TritonError("a composing model failed; retry later", pb.TritonError.UNAVAILABLE))
        # No stack trace to the client; the server log has it.
        pb.Logger.log_error(f"{self.name}: internal error: {traceback.format_exc()}")
        return pb.InferenceResponse(error=pb.TritonError("internal error", pb.TritonError.INTERNAL))

    def handle(self, requests, fn):
        out = []
        for request in requests:
            try:
                # A request whose client already gave up (gRPC deadline or cancel: Triton passes
                # it on as request.is_cancelled()) is not computed at all; a write not started is
                # not acknowledged either, and the client's retry carries the same event ids.
                if request.is_cancelled():
                    self.stats.cancelled("start")
                    raise Cancelled("start")
                out.append(fn(request))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error
                out.append(self._error(exc))
        return out

    # -- endpoints ----------------------------------------------------------------------------
    def recommend(self, request):
        pb = self.pb
        user_id = T.one_string(pb, request, "user_id")
        k = T.one_int(pb, request, "k", default=DEFAULT_K)
        query = T.one_string(pb, request, "query", required=False)
        exclude = T.strings(pb, request, "exclude_item_ids", required=False) or []
        # The explanation is opt-in by an input, not by naming the output: a request naming no
        # output is given all of them (Triton's rule; perf_analyzer does so) and must not pay for it.
        explain = T.one_bool(pb, request, "explain", default=False)
        rec = self.recommender.recommend(user_id, k=k, query=query or None, exclude=exclude, cancelled=request.is_cancelled,
                                         explain=explain)  # fmt: skip
        outputs = [T.string_tensor(pb, "item_ids", rec.item_ids), pb.Tensor("scores", rec.scores.astype(np.float32))]
        if explain:
            outputs.append(T.string_tensor(pb, "explanation", [json.dumps(rec.explanation, separators=(",", ":"))]))
        return pb.InferenceResponse(output_tensors=outputs)

    def ingest_events(self, request):
        pb = self.pb
        users = T.strings(pb, request, "user_id")
        items = T.strings(pb, request, "item_id")
        types = T.strings(pb, request, "event_type")
        stamps = T.numbers(pb, request, "timestamp", np.float64)
        n = len(users)
        values = T.numbers(pb, request, "value", np.float32, required=False)
        ids = T.strings(pb, request, "event_id", required=False)
        for name, col in (("item_id", items), ("event_type", types), ("timestamp", stamps), ("value", values), ("event_id", ids)):
            if col is not None and len(col) != n:
                raise InvalidInput(f"input {name!r} has {len(col)} elements but user_id has {n}")
        if n == 0:
            raise InvalidInput("no events in the request")
        events = [
            Event(users[i], items[i], types[i], float(stamps[i]),
                  math.nan if values is None else float(values[i]), None if ids is None else ids[i])
            for i in range(n)
        ]  # fmt: skip
        accepted = self.recommender.ingest(events)
        now = time.time()
        for e in events:
            self.stats.freshness_lag(now - e.timestamp)
        return pb.InferenceResponse(output_tensors=[pb.Tensor("accepted", np.array([accepted], dtype=np.int64))])

    def upsert_items(self, request):
        pb = self.pb
        ids = T.strings(pb, request, "item_id")
        texts = T.strings(pb, request, "text")
        metadata = T.strings(pb, request, "metadata", required=False)
        if len(texts) != len(ids) or (metadata is not None and len(metadata) != len(ids)):
            raise InvalidInput("item_id, text and metadata must have the same number of elements")
        if not ids:
            raise InvalidInput("no items in the request")
        accepted = self.recommender.upsert(ids, texts, metadata)
        self.stats.items_added(accepted)
        return pb.InferenceResponse(output_tensors=[pb.Tensor("accepted", np.array([accepted], dtype=np.int64))])

    def forget_user(self, request):
        pb = self.pb
        user_id = T.one_string(pb, request, "user_id")
        check_key(T.one_string(pb, request, "key"), self.forget_key)
        t0 = time.perf_counter()
        removed = self.recommender.forget(user_id)
        # The id is not logged: the log would keep what the store no longer does.
        pb.Logger.log_info(f"forget_user: removed {removed} events of one user in {(time.perf_counter() - t0) * 1e3:.1f} ms")
        return pb.InferenceResponse(output_tensors=[pb.Tensor("removed", np.array([removed], dtype=np.int64))])
