"""Request and response models of the REST API (docs/api.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Bounds of every number and list a request may hold, so that no value reaches the work unchecked (422, never a
# 500 or minutes of work). The settings (VIDRET_MAX_K, VIDRET_MAX_BATCH, ...) are checked after, within these.
K_MAX = 10_000  # the largest k (and cutoff in ks) any setting allows; VIDRET_MAX_K is the served one
KS_MAX_ITEMS = 32  # cutoffs in one evaluation
BATCH_MAX_ITEMS = 4096  # queries in one batch (VIDRET_MAX_BATCH, at most this)
EMBEDDING_MAX_ITEMS = 65_536  # values of a query vector
QUERY_IDS_MAX_ITEMS = 100_000  # query_ids of one evaluation (VIDRET_MAX_EVAL_QUERIES is checked after)
ID_MAX_CHARS = 1024  # a video id in a body (the id rule itself is stricter)
OFFSET_MAX = 2**31 - 1  # a listing's offset
Cutoff = Annotated[int, Field(ge=1, le=K_MAX)]


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=ID_MAX_CHARS, description="An indexed video id.")
    embedding: list[float] | None = Field(
        None, max_length=EMBEDDING_MAX_ITEMS, description="A query vector of the index's dimension."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Query:
        if (self.id is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'id' and 'embedding'")
        return self


FILTER_VALUE_MAX = 4096


class SearchFilter(BaseModel):
    """Metadata conditions on the hits, combined with AND; a missing or null field constrains nothing."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(None, max_length=FILTER_VALUE_MAX, description="Only hits with exactly this label.")
    camera: str | None = Field(None, max_length=FILTER_VALUE_MAX, description="Only hits from exactly this camera.")
    exclude_camera: str | None = Field(
        None, max_length=FILTER_VALUE_MAX, description="Only hits from any other camera than this one."
    )

    @field_validator("label", "camera", "exclude_camera")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None and ("\n" in v or "\r" in v):
            raise ValueError("must not contain a line break")  # Milvus expressions cannot hold one
        return v

    def to_index(self) -> dict[str, str | None]:
        return {"label": self.label, "camera": self.camera, "exclude_camera": self.exclude_camera}


class SearchRequest(Query):
    k: int = Field(10, ge=1, le=K_MAX)
    exclude_self: bool = True
    filter: SearchFilter | None = Field(None, description="Metadata conditions on the hits (label, camera).")


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[Query] = Field(..., min_length=1, max_length=BATCH_MAX_ITEMS)
    k: int = Field(10, ge=1, le=K_MAX)
    exclude_self: bool = True
    filter: SearchFilter | None = Field(None, description="Metadata conditions on the hits, for every query.")


class Hit(BaseModel):
    id: str
    score: float
    label: str
    camera: str


class SearchResponse(BaseModel):
    results: list[Hit]
    took_ms: float


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]]
    took_ms: float


class ModelInfo(BaseModel):
    checkpoint: str = Field(..., description="The checkpoint's file name.")
    sha256: str = Field(..., description="The sha256 of the checkpoint (of the one it was exported from, for ONNX).")
    runtime: str = Field("torch", description="What embeds uploads: torch (a .pt checkpoint) or onnx (an export).")


class IndexInfo(BaseModel):
    count: int
    dim: int
    type: str
    metric: str
    model: ModelInfo | None
    created: str


class VideoInfo(BaseModel):
    id: str
    label: str
    camera: str
    path: str = Field(
        ...,
        description="videos/<file> (inside the index folder) for a video added through the API, "
        "the file name for any other; never an absolute server path.",
    )
    added_at: float


class VideoList(BaseModel):
    videos: list[VideoInfo]
    total: int


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query_ids: list[Annotated[str, Field(max_length=ID_MAX_CHARS)]] | None = Field(
        None, min_length=1, max_length=QUERY_IDS_MAX_ITEMS
    )
    all: bool = False
    ks: list[Cutoff] = Field(default_factory=lambda: [1, 5, 10], min_length=1, max_length=KS_MAX_ITEMS)
    rerank: bool = Field(False, description="k-reciprocal re-ranking before scoring (docs/evaluation.md).")
    k1: int = Field(20, ge=1, le=100, description="rerank: neighbourhood size.")
    k2: int = Field(6, ge=1, le=101, description="rerank: query expansion over the k2 nearest (at most k1 + 1).")
    lambda_value: float = Field(0.3, ge=0, le=1, description="rerank: weight of the original distance.")

    @model_validator(mode="after")
    def _one_of(self) -> EvaluateRequest:
        if (self.query_ids is None) == (not self.all):
            raise ValueError("give either 'query_ids' or 'all': true")
        if self.k2 > self.k1 + 1:
            raise ValueError("k2 must be at most k1 + 1")
        return self


class EvaluateResponse(BaseModel):
    mAP: float
    cmc: dict[str, float]
    num_queries: int
    skipped: int


class Status(BaseModel):
    status: str


class ErrorBody(BaseModel):
    detail: str


class QueryAP(BaseModel):
    id: str
    label: str
    camera: str
    ap: float | None = Field(
        ...,
        description="The query's average precision; null when no other indexed video "
        "counts as relevant to it (such queries are 'skipped').",
    )


class PerQueryResponse(EvaluateResponse):
    queries: list[QueryAP] = Field(..., description="One entry per query, in the order asked.")


class AuditInfo(BaseModel):
    source: str = Field(
        ..., description="'import' (an uploaded `vidret audit` CSV) or 'computed' (by the server from its checkpoint)."
    )
    created_at: float
    rows: int = Field(..., description="Rows in the stored audit (each names an indexed video).")


class AuditImport(AuditInfo):
    unknown_ids: int = Field(0, description="Rows of the upload whose id is not an indexed video (not stored).")
    unknown_label: int = Field(0, description="Computed: videos whose label is not a class of the checkpoint.")
    missing_file: int = Field(0, description="Computed: videos whose file is not available.")
    undecodable: int = Field(0, description="Computed: videos whose file could not be decoded.")


class AuditJobInfo(BaseModel):
    id: str
    url: str = Field(..., description="The job's URL: GET for its progress and result, DELETE to cancel it.")
    state: Literal["running", "cancelling", "done", "failed", "cancelled"]
    done: int = Field(..., description="Videos decoded and scored so far.")
    total: int | None = Field(..., description="Videos the job audits (null until counted).")
    started_at: float
    finished_at: float | None
    result: AuditImport | None = Field(..., description="When done: the stored audit, as an import's answer.")
    error: str | None = Field(..., description="When failed: why.")


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["keep", "relabel", "drop"]
    label: str | None = Field(None, description="The new label; only (and then required) with 'relabel'.")


class DecisionInfo(BaseModel):
    id: str
    action: str
    label: str | None
    decided_at: float


class ReviewItem(BaseModel):
    id: str
    label: str = Field(..., description="The label the index holds for the video.")
    camera: str
    audit_label: str = Field(..., description="The label the audit scored (normally the same as label).")
    p_label: float
    predicted: str
    p_predicted: float
    suspicion: float
    decision: DecisionInfo | None
    neighbours: list[Hit]


class ReviewQueue(BaseModel):
    items: list[ReviewItem]
    total: int = Field(..., description="Audited videos that are in the index (after the 'undecided' filter).")
    offset: int
    decided: int = Field(..., description="Audited videos with a decision.")
    audit: AuditInfo | None
