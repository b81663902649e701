"""The tensor contract: every served model's inputs and outputs, declared once.

The ONNX exporter, the generated config.pbtxt files, the Python-backend adapters, the client and
the tests all read these declarations. Dims exclude the batch dimension for batched models
(`max_batch_size > 0`); -1 marks a dynamic dimension. Names that appear as integers in a config
(L, C, D, ...) are resolved by `resolve()` against a model config at export time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from freshrec.config import EVENT_FEATURES, EVENT_TYPES, TEXT_VOCAB, ModelConfig

# Triton dtype name -> numpy dtype. TYPE_STRING travels as numpy object arrays of bytes.
NUMPY_DTYPES: dict[str, type] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# Triton dtype name -> the wire name tritonclient uses.
WIRE_DTYPES: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}

Dim = int | str  # an int, or a symbolic size resolved from the model config ("L", "C", "D", "T")

# -- the request contract of the public models (recommend, ingest_events, upsert_items) ---------
DEFAULT_K = 10  # results when a recommend request names no k (the largest is DeployConfig.max_k)
MAX_ID_BYTES = 512  # user, item and event ids are keys, not documents
MAX_TEXT_BYTES = 16384  # an item text or a query
MAX_FUTURE_S = 86400.0  # clock skew tolerated on event timestamps
MAX_BATCH_ITEMS = 10_000  # events or items in one ingest/upsert request, ids in one exclude list

# -- the model repository's file names (the exporter writes them, the server reads them) --------
ONNX_FILE = "model.onnx"  # an exported graph, in each ONNX model's version folder
SETTINGS_FILE = "freshrec.json"  # model + deploy config beside each pipeline model's model.py
TOKENIZER_FILE = "tokenizer.json"  # MiniLM's word pieces, beside the pipeline models that embed text
TOPICS_FILE = "topics.safetensors"  # the build's LDA topic model (vocabulary + components), beside recommend and upsert_items
CARD_FILE = "model_card.json"  # a model version's card (parent, data window, gate, checksums), in recommend's version folder


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton TYPE_* name
    dims: tuple[Dim, ...]
    # An input a request may leave out; an output that a response may lack (computed only when an
    # input asks for it).
    optional: bool = False
    doc: str = ""
    # Integer inputs that index a table: the values a graph accepts, (low, high) inclusive; a
    # symbolic high ("I", "K", "V") is resolved by Sizes. The served graphs' guard refuses others.
    values: tuple[int, Dim] | None = None

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.dtype]

    @property
    def wire_dtype(self) -> str:
        return WIRE_DTYPES[self.dtype]


@dataclass(frozen=True)
class ModelContract:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool  # True: Triton adds a leading batch dim and may batch requests dynamically
    doc: str = ""
    tolerance: float = 0.0  # export parity: max abs difference ONNX vs PyTorch (0 = not exported)

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def default_output_names(self) -> list[str]:
        """The outputs a client asks for unless it wants an optional one too."""
        return [t.name for t in self.outputs if not t.optional]


def _t(name: str, dtype: str, *dims: Dim, optional: bool = False, doc: str = "", values: tuple[int, Dim] | None = None) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims), optional, doc, values)


_HISTORY = (
    _t("history_vectors", "TYPE_FP32", "L", "D", doc="item-tower vectors of the latest events, oldest first, left-padded"),
    _t("history_features", "TYPE_FP32", "L", EVENT_FEATURES, doc="log gap to previous event, normalised value"),
    _t("history_types", "TYPE_INT64", "L", doc="event type index (0 = padding)", values=(0, "K")),
    _t("history_mask", "TYPE_BOOL", "L", doc="true where a real event sits"),
)

TEXT_ENCODER = ModelContract(
    name="text_encoder",
    inputs=(
        _t("input_ids", "TYPE_INT64", "T", doc="word-piece ids, padded to the batch's longest text (a multiple of 8, at most max_tokens)",
           values=(0, "V")),
        _t("attention_mask", "TYPE_INT64", "T", values=(0, 1)),
    ),
    outputs=(
        _t("text_embedding", "TYPE_FP32", "E", doc="all-MiniLM-L6-v2 sentence embedding, unit norm"),
        _t("content_vector", "TYPE_FP32", "Ec", doc="the embedding centred on the catalog mean, projected on its principal axes, unit norm"),
    ),
    batched=True,
    doc="Frozen pretrained sentence encoder (mean pooling + L2 normalisation) and its content projection (fitted at build time).",
    tolerance=1e-4,
)

ITEM_TOWER = ModelContract(
    name="item_tower",
    inputs=(
        _t("text_embedding", "TYPE_FP32", "E"),
        _t("id_index", "TYPE_INT64", 1, doc="row of the learned id table; 0 = unseen item, text only", values=(0, "I")),
    ),
    outputs=(_t("item_vector", "TYPE_FP32", "D", doc="unit-norm vector in the retrieval space"),),
    batched=True,
    doc="Projection of the text embedding (+ learned id row) into the retrieval space.",
    tolerance=1e-5,
)

USER_TOWER = ModelContract(
    name="user_tower",
    inputs=_HISTORY,
    outputs=(_t("user_vector", "TYPE_FP32", "D", doc="unit-norm vector in the retrieval space"),),
    batched=True,
    doc="Causal transformer over the latest events; the newest position is the user.",
    tolerance=1e-4,
)

RERANKER = ModelContract(
    name="reranker",
    inputs=_HISTORY
    + (
        _t("candidate_vectors", "TYPE_FP32", "C", "D", doc="item-tower vectors of the retrieved candidates"),
        _t("candidate_mask", "TYPE_BOOL", "C", doc="true for real candidates, false for padding"),
        _t("candidate_scores", "TYPE_FP32", "C", doc="retrieval scores (user . item cosine) of the candidates"),
    ),
    outputs=(_t("scores", "TYPE_FP32", "C", doc="one logit per candidate; padding gets -inf-like values"),),
    batched=True,
    doc="GPT-style causal transformer; each candidate token attends to the history and itself.",
    tolerance=1e-4,
)

RECOMMEND = ModelContract(
    name="recommend",
    inputs=(
        _t("user_id", "TYPE_STRING", 1),
        _t("k", "TYPE_INT32", 1, optional=True, doc=f"results wanted; default {DEFAULT_K}, at most max_k"),
        _t("query", "TYPE_STRING", 1, optional=True, doc="free-text intent, matched in content and blended with the user's own list"),
        _t("exclude_item_ids", "TYPE_STRING", -1, optional=True, doc="items never to return"),
        _t("explain", "TYPE_BOOL", 1, optional=True, doc="true: also the explanation output; default false (none computed)"),
    ),
    outputs=(
        _t("item_ids", "TYPE_STRING", -1, doc="k item ids, best first"),
        _t("scores", "TYPE_FP32", -1, doc="their scores, best first"),
        _t("explanation", "TYPE_STRING", 1, optional=True,
           doc="JSON: the user's top interest topics (words, weights) and, per item, the topic it shares most with "
               "the user and the history item carrying it; only when the input explain is true"),
    ),
    batched=False,
    doc="BLS pipeline: user tower + content channels -> retrieval -> reranker -> filter -> top-k.",
)

INGEST_EVENTS = ModelContract(
    name="ingest_events",
    inputs=(
        _t("user_id", "TYPE_STRING", -1),
        _t("item_id", "TYPE_STRING", -1),
        _t("event_type", "TYPE_STRING", -1),
        _t("timestamp", "TYPE_FP64", -1, doc="unix seconds"),
        _t("value", "TYPE_FP32", -1, optional=True, doc="e.g. a rating; NaN = none"),
        _t("event_id", "TYPE_STRING", -1, optional=True, doc="idempotency key: a retry is stored once"),
    ),
    outputs=(_t("accepted", "TYPE_INT64", 1, doc="events newly stored"),),
    batched=False,
    doc="Durably stores events; the next recommend on any instance sees them.",
)

UPSERT_ITEMS = ModelContract(
    name="upsert_items",
    inputs=(
        _t("item_id", "TYPE_STRING", -1),
        _t("text", "TYPE_STRING", -1),
        _t("metadata", "TYPE_STRING", -1, optional=True, doc="JSON object per item"),
    ),
    outputs=(_t("accepted", "TYPE_INT64", 1, doc="items inserted or updated"),),
    batched=False,
    doc="Embeds items by text (text encoder -> item tower) and adds them to the retrieval index.",
)

FORGET_USER = ModelContract(
    name="forget_user",
    inputs=(
        _t("user_id", "TYPE_STRING", 1),
        _t("key", "TYPE_STRING", 1, doc="the server's forget key (FRESHREC_FORGET_KEY; `freshrec serve` uses its admin key)"),
    ),
    outputs=(_t("removed", "TYPE_INT64", 1, doc="events removed; 0 when the user has none (already forgotten)"),),
    batched=False,
    doc="Removes every event, seen item and derived state of a user from the store, durably, before it answers.",
)

ONNX_MODELS: tuple[ModelContract, ...] = (TEXT_ENCODER, ITEM_TOWER, USER_TOWER, RERANKER)
# The exported models each pipeline model runs: recommend embeds free-text queries, upsert_items
# embeds item texts, ingest_events and forget_user only write.
PIPELINE_RUNS: dict[str, tuple[str, ...]] = {
    "recommend": ("user_tower", "reranker", "text_encoder", "item_tower"),
    "ingest_events": (),
    "upsert_items": ("text_encoder", "item_tower"),
    "forget_user": (),
}
PIPELINE_MODELS: tuple[ModelContract, ...] = (RECOMMEND, INGEST_EVENTS, UPSERT_ITEMS, FORGET_USER)


def served_models(engine: str) -> tuple[str, ...]:
    """The models a server loads for a resolved engine ("inprocess" or "bls"): the public ones,
    and with BLS the exported models they call. With the in-process engine the pipeline runs the
    ONNX files itself, so the towers are never loaded and no client can reach them."""
    public = tuple(m.name for m in PIPELINE_MODELS)
    if engine == "inprocess":
        return public
    if engine == "bls":
        return public + tuple(m.name for m in ONNX_MODELS)
    raise ValueError(f"engine must be 'inprocess' or 'bls' (resolved), got {engine!r}")


ALL_MODELS: tuple[ModelContract, ...] = ONNX_MODELS + PIPELINE_MODELS
BY_NAME: dict[str, ModelContract] = {m.name: m for m in ALL_MODELS}


@dataclass(frozen=True)
class Sizes:
    """Concrete values for the symbolic dims of one model configuration."""

    L: int
    C: int
    D: int
    T: int
    E: int
    extra: dict[str, int] = field(default_factory=dict)
    I: int = 0  # highest row of the item tower's learned id table (its id_vocab)  # noqa: E741
    Ec: int = 0  # content vector size (TextEncoderConfig.content_dim)
    K: int = len(EVENT_TYPES) - 1  # highest event type index
    V: int = TEXT_VOCAB - 1  # highest word-piece id

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Sizes":
        if cfg.user.max_history != cfg.reranker.max_history or cfg.user.dim != cfg.item.dim or cfg.reranker.dim != cfg.item.dim:
            raise ValueError("user tower, reranker and item tower must share max_history and dim")
        return cls(L=cfg.user.max_history, C=cfg.reranker.num_candidates, D=cfg.item.dim, T=cfg.text.max_tokens, E=cfg.text.dim,
                   I=cfg.item.id_vocab, Ec=cfg.text.content_dim)  # fmt: skip

    def value_range(self, spec: TensorSpec) -> tuple[int, int] | None:
        """The inclusive range of values `spec` accepts, resolved; None when it is not an index."""
        if spec.values is None:
            return None
        lo, hi = spec.values
        return int(lo), int(getattr(self, hi) if isinstance(hi, str) else hi)

    def resolve(self, spec: TensorSpec, static: bool = True) -> list[int]:
        """Concrete dims for a spec. `static=False` keeps L, C, T dynamic (-1) as in ONNX graphs."""
        out = []
        for d in spec.dims:
            if isinstance(d, int):
                out.append(d)
            elif not static and d in ("L", "C", "T"):
                out.append(-1)
            else:
                out.append(getattr(self, d))
        return out
