"""Service settings: environment variables prefixed ``VIDRET_``, and ``vidret serve``'s flags.

``service/cli.py`` builds ``vidret serve``'s options from these fields (``serve_options()``): a field added here
is a flag there (``max_k`` -> ``--max-k``), its help the field's description, its environment variable and its
default. Give every field a ``description``; ``json_schema_extra={"cli": False}`` keeps a field environment-only.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDRET_", extra="ignore")

    index: Path = Field(
        Path("index"),
        description="Index folder (vidret index build). With backend milvus: the folder for uploaded videos and "
        "the review store (created if missing).",
    )
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="Where the vectors and metadata live: the FAISS index folder, or a Milvus collection."
    )
    milvus_uri: str | None = Field(
        None, description="Milvus URI (http://host:19530), or a local file ending in .db for milvus-lite."
    )
    milvus_collection: str = Field("vidret", description="The Milvus collection (vidret index build --backend milvus).")
    milvus_token: str | None = Field(
        None,
        description="Milvus credentials ('user:password' or an API key).",
        json_schema_extra={"cli": False},  # a secret: environment only (a flag would show in the process list)
    )
    mmap: bool = Field(
        False,
        description="Open the FAISS index memory-mapped (IVF lists and vectors.npy stay on disk, so an index larger "
        "than RAM can be served); the index is then read-only: adds and deletes get 409.",
    )
    checkpoint: Path | None = Field(None, description="Checkpoint that embeds uploaded videos.")
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, description="Port.")
    api_key: str | None = Field(
        None,
        description="When set, adding and deleting videos need 'Bearer <key>'. "
        "Without it, writes are refused unless the server listens only on loopback (decided from its listening "
        "sockets) and no read_api_key is set, or allow_unauthenticated_writes is set.",
    )
    read_api_key: str | None = Field(
        None,
        description="When set, searches, listings, thumbnails and evaluation "
        "need 'Bearer <key>' with this key or api_key, and so does /metrics unless metrics_api_key is set "
        "(/health, /ready and the web page stay open). It never authorises a write.",
    )
    allow_unauthenticated_writes: bool = Field(
        False,
        description="Allow adds and deletes without api_key on a "
        "non-loopback address (anyone who can reach the server can write).",
    )
    max_eval_queries: int = Field(1000, ge=1, description="Queries one /v1/evaluate may run (past it, 422).")
    max_upload_mb: float = Field(64.0, gt=0, description="Upload size limit in MB (past it, 413).")
    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a search may ask for.")
    max_frames: int = Field(3000, ge=1, description="Frames an upload may have (longer videos are refused).")
    max_batch: int = Field(256, ge=1, le=4096, description="Queries per batch search.")
    max_json_kb: int = Field(
        2048,
        ge=1,
        le=1 << 20,
        description="The largest JSON (non-upload) request body, in KiB; checked before it is parsed (past it, 413).",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated Host names (and host:port) the server answers, besides localhost, 127.0.0.1, "
        "::1, the configured host and the address a connection arrived at; '*' allows any (behind a proxy that "
        "checks Host). Other Host headers get 400 (DNS rebinding).",
    )
    metrics_api_key: str | None = Field(
        None,
        description="When set, /metrics needs 'Bearer <key>' with this key (or api_key); otherwise /metrics needs "
        "read_api_key when that is set, and is open when it is not.",
    )
    docs: bool = Field(
        False,
        description="Serve the interactive API documentation at /docs (Swagger UI). Its assets are served from "
        "docs_assets; without them /docs is off (the page would load its script from a third-party host). "
        "/openapi.json is always served.",
    )
    docs_assets: Path | None = Field(
        None,
        description="A folder holding swagger-ui-bundle.js and swagger-ui.css (the swagger-ui-dist package), "
        "served at /docs/assets when docs is on.",
    )
    max_concurrent_evaluations: int = Field(
        2, ge=1, le=1024, description="Evaluations running at once (/v1/evaluate, /v1/evaluate/queries); more: 503."
    )
    max_concurrent_uploads: int = Field(
        4, ge=1, le=1024, description="Uploads processed at once (adding a video, searching by video); more: 503."
    )
    max_concurrent_audits: int = Field(
        1, ge=1, le=64, description="Audit imports and computations running at once; more: 503."
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers before it is disconnected."
    )
    body_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Seconds a request body may stall (no bytes arriving) before the request gets 408 and is closed.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open connections at most; more are answered 503 and closed at once (0: from the file "
        "limit, which `vidret serve` raises to its hard limit, keeping a quarter (at least 64) for files).",
    )
    max_frame_pixels: int = Field(
        3840 * 2160,
        ge=1,
        description="Pixels (width x height) an upload's frames may have, as its container declares them, checked "
        "before decoding: larger ones are refused with 413 (a small file can declare huge frames).",
    )
    thumbnail_cache_mb: float = Field(
        32.0, ge=0, description="Memory for cached thumbnails (JPEG bytes, least recently used dropped first; 0: none)."
    )
    device: str = Field("auto", description="Device of the model that embeds uploads: auto | cpu | cuda.")
    snapshot_every: int = Field(200, ge=1, description="Compact the journal into a snapshot after this many writes.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long inference waits to batch concurrent uploads.")
    search_coalesce: int = Field(
        64,
        ge=1,
        description="Concurrent searches answered by one index call, at most (1: every request searches on its own).",
    )
    search_threads: int = Field(
        0, ge=0, description="FAISS threads of the coalescing search thread (0: half the CPU cores, at least 1)."
    )

    @property
    def binds_loopback(self) -> bool:
        """Whether the configured bind address only accepts connections from this machine."""
        host = self.host.strip().strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name: it may resolve to any interface
            return False
