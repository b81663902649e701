"""Python client for the freshrec Triton models: ``recommend``, ``ingest_events``, ``upsert_items``, ``forget_user``.

    from freshrec.client import EventIn, FreshrecClient

    with FreshrecClient("127.0.0.1:8001") as client:
        client.ingest([EventIn("u1", "item-42")])
        rec = client.recommend("u1", k=5)

Errors are ``FreshrecError`` subclasses (``InvalidArgument``, ``Unavailable``, ...), never
tritonclient or grpc exceptions.
"""

from freshrec.client.errors import (
    Cancelled,
    DeadlineExceeded,
    FreshrecError,
    InvalidArgument,
    NotFound,
    ServerError,
    Unavailable,
    from_grpc,
    from_stream_error,
    from_triton,
)
from freshrec.client.grpc_client import (
    DEFAULT_URL,
    AsyncFreshrecClient,
    EventIn,
    FreshrecClient,
    ItemIn,
    Recommendation,
    StreamingRecommender,
    build_forget_inputs,
    build_ingest_inputs,
    build_inputs,
    build_recommend_inputs,
    build_upsert_inputs,
    to_infer_inputs,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncFreshrecClient",
    "Cancelled",
    "DeadlineExceeded",
    "EventIn",
    "FreshrecClient",
    "FreshrecError",
    "InvalidArgument",
    "ItemIn",
    "NotFound",
    "Recommendation",
    "ServerError",
    "StreamingRecommender",
    "Unavailable",
    "build_forget_inputs",
    "build_ingest_inputs",
    "build_inputs",
    "build_recommend_inputs",
    "build_upsert_inputs",
    "from_grpc",
    "from_stream_error",
    "from_triton",
    "to_infer_inputs",
]
