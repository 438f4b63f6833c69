"""A Milvus collection as the index, for ``--backend milvus``: an ``IndexBackend`` (indexing/backend.py), as the
FAISS backend (indexing/faiss_index.py) is.

The name you give (``--milvus-collection``, default ``vidret``) is a small *record* collection: one row, key
``current``, whose ``info`` is the index's record as JSON (type, metric, dim, created, the checkpoint's sha256, the
Milvus index and its search parameters) and ``data``, the name of the *data* collection that holds the videos:
``<name>__<8 hex digits>``, one entity per video with its string id as the primary key, ``row`` (the order of the
index: build order, then the time of each add), ``label``, ``camera``, ``path``, ``added_at`` and ``vector``.

A build fills and indexes a new data collection, then switches the record's row to it (one upsert of one row)
and drops the data collection it replaced. Milvus has no transaction across collections, and milvus-lite 2.5
implements neither aliases nor renames, so this pointer is the switch: a failed or killed build leaves the record,
and so the served data, as they were (a killed build leaves its half-filled data collection behind, under its
own name). A server whose data collection was replaced follows the record on its next request.

Nothing of the index is held in this process, so the server's memory does not grow with the collection, and
durability is Milvus's: an add or delete is answered once Milvus has acknowledged it, and ``save`` is a flush.

The URI is any Milvus URI: ``http://host:19530`` for Milvus standalone or a cluster, or a local file path ending in
``.db`` for milvus-lite (``pip install 'pymilvus[milvus_lite]'``), which runs the Milvus engine in a subprocess of
this process, one per file; it stops when the last index of this process on that file is closed.

Ids, labels and cameras reach Milvus only inside boolean expressions, each one as an escaped string literal
(indexing/filters.py ``milvus_literal``); pymilvus' own ``get``/``delete`` by ids would quote them unescaped.
"""

from __future__ import annotations

import calendar
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexing.backend import (
    DuplicateIdError,
    Hit,
    IndexInfo,
    RWLock,
    UnknownIdError,
    checked_queries,
    checked_vectors,
    to_scores,
)
from indexing.embeddings import Embeddings
from indexing.errors import UserError
from indexing.filters import LINE_BREAKS, SearchFilter, milvus_literal
from indexing.ids import check_entries
from indexing.planning import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    INDEX_TYPES,
    PQ_BITS,
    choose_type,
    default_nlist,
    pq_m,
)
from indexing.store import VideoMeta

FORMAT = "vidret-milvus"
RECORD_KEY = "current"  # the record collection's one row
DEFAULT_COLLECTION = "vidret"
MAX_TEXT = 4096  # bytes of an id, label or camera (Milvus VARCHAR fields have a declared maximum)
MAX_PATH = 65535
META_FIELDS = ["id", "row", "label", "camera", "path", "added_at"]
INSERT_BATCH = 1000
ITER_BATCH = 1000
PAGE_SLACK = 2048  # a listing's page is read from a row range of at most its length plus twice this
LITE_START_S = 60  # how long a milvus-lite server may take to listen (it starts as a subprocess)
LITE_TYPES = ("flat", "ivf")  # the index types milvus-lite builds (FLAT, IVF_FLAT); a server builds every type
TOP_ROW = 2**63 - 1  # above every row (rows are build positions or nanosecond times)
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,244}")  # 255 with the data collection's suffix
_local_lock = threading.Lock()
_local_clients: dict[str, int] = {}  # milvus-lite database file -> open clients of this process


class MilvusError(RuntimeError):
    """Milvus failed a request of a served index (unreachable, overloaded, ...): not the user's mistake; the service
    answers 503."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise UserError(
            "--backend milvus needs pymilvus: pip install 'vidret[milvus]' (or 'pymilvus[milvus_lite]' for a local "
            "file URI)"
        ) from None
    return pymilvus


def _milvus_error() -> type[Exception]:
    return _pymilvus().MilvusException


def _local_file(uri: str) -> str | None:
    """The database file of a milvus-lite URI (a local path ending in .db), else None."""
    return str(Path(uri).absolute().resolve()) if uri.endswith(".db") and "://" not in uri else None


def connect(uri: str, token: str | None = None) -> Any:
    """A MilvusClient for ``uri``; a URI that cannot be opened is a UserError naming --milvus-uri. Close it with
    ``disconnect``."""
    pymilvus = _pymilvus()
    if not uri:
        raise UserError("--milvus-uri is required with --backend milvus")
    local = _local_file(uri)
    deadline = time.monotonic() + LITE_START_S
    while True:
        try:
            client = pymilvus.MilvusClient(uri=uri, token=token or "", timeout=30)
            break
        except Exception as exc:  # pymilvus raises several types for an unreachable server or a bad local path
            if local is not None and "Fail connecting" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.2)  # milvus-lite's server is started but not listening yet (pymilvus waits 0.5 s)
                continue
            if local is not None and "Open local milvus failed" in str(exc):
                raise UserError(
                    f"--milvus-uri {uri}: milvus-lite cannot open it: another process has it open (milvus-lite serves "
                    "a file to one process at a time; use a Milvus server to share it) or it is not a milvus-lite "
                    "database"
                ) from None
            raise UserError(f"--milvus-uri {uri}: cannot connect ({type(exc).__name__}: {_first_line(exc)})") from None
    if local is not None:
        with _local_lock:
            _local_clients[local] = _local_clients.get(local, 0) + 1
    return client


def disconnect(client: Any, uri: str) -> None:
    """Close ``client``; the last one of this process on a milvus-lite file also stops that file's server (pymilvus
    leaves it running until the process exits, holding the file's lock)."""
    client.close()
    local = _local_file(uri)
    if local is None:
        return
    with _local_lock:
        _local_clients[local] -= 1
        if _local_clients[local] > 0:
            return
        del _local_clients[local]
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(local)


def _first_line(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return str(msg).splitlines()[0][:200] if str(msg) else type(exc).__name__


def check_collection_name(name: str) -> str:
    if not _COLLECTION_NAME.fullmatch(name or ""):
        raise UserError(
            f"--milvus-collection {name!r}: a collection name is a letter or _ followed by letters, digits and _ "
            "(at most 245)"
        )
    return name


def milvus_index(kind: str, dim: int, n: int) -> tuple[str, dict[str, int], dict[str, int]]:
    """The Milvus index type of a vidret index ``kind``, its build parameters and its search parameters. IVF's
    nprobe is not tuned here (as FAISS's is): it is an eighth of nlist, at least 8."""
    if kind == "flat":
        return "FLAT", {}, {}
    if kind == "hnsw":
        return "HNSW", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}, {"ef": HNSW_EF_SEARCH}
    nlist = default_nlist(n)
    nprobe = {"nprobe": min(nlist, max(8, nlist // 8))}
    if kind == "ivf":
        return "IVF_FLAT", {"nlist": nlist}, nprobe
    if kind == "ivfpq":
        return "IVF_PQ", {"nlist": nlist, "m": pq_m(dim), "nbits": PQ_BITS}, nprobe
    raise ValueError(f"unknown index type {kind!r}")


def _schema(client: Any, dim: int) -> Any:
    DataType = _pymilvus().DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_TEXT)
    schema.add_field("row", DataType.INT64)
    schema.add_field("label", DataType.VARCHAR, max_length=MAX_TEXT)
    schema.add_field("camera", DataType.VARCHAR, max_length=MAX_TEXT)
    schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("added_at", DataType.DOUBLE)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    return schema


def _check_text(values: Sequence[str], what: str, limit: int = MAX_TEXT) -> None:
    for v in values:
        if len(str(v).encode("utf-8")) > limit:
            raise UserError(f"{what} {str(v)[:40]!r}...: longer than {limit} bytes (the Milvus field's maximum)")


def _entities(
    ids: Sequence[str],
    rows: Sequence[int],
    labels: Sequence[str],
    cameras: Sequence[str],
    paths: Sequence[str],
    added_at: float,
    vectors: np.ndarray,
) -> list[dict[str, Any]]:
    check_entries(ids, labels, cameras)  # indexing/ids.py: the same rule as the FAISS store
    _check_text(ids, "id")
    broken = next((i for i in ids if any(c in str(i) for c in LINE_BREAKS)), None)
    if broken is not None:  # ids are looked up through expressions, which cannot hold a line break
        raise UserError(f"id {str(broken)[:40]!r}: an id with a line break cannot be stored in Milvus")
    _check_text(labels, "label")
    _check_text(cameras, "camera")
    _check_text(paths, "path", MAX_PATH)
    return [
        {"id": str(i), "row": int(r), "label": str(lab), "camera": str(cam), "path": str(p), "added_at": added_at,
         "vector": v.tolist()}
        for i, r, lab, cam, p, v in zip(ids, rows, labels, cameras, paths, vectors, strict=True)
    ]  # fmt: skip


def _ns(created: str) -> int:
    """Nanoseconds since the epoch of an index's ``created`` (UTC, as the build writes it)."""
    return calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) * 10**9


def _meta(e: dict[str, Any]) -> VideoMeta:
    return VideoMeta(
        str(e["id"]), int(e["row"]), str(e["label"]), str(e["camera"]), str(e["path"]), float(e["added_at"])
    )


def _index_data(client: Any, info: dict[str, Any], type: str, memory_budget_mb: float, lite: bool) -> None:
    """Index and load the data collection ``info["data"]``, and add the index's type and parameters to ``info``.
    With ``auto`` the type follows the FAISS backend's choice; milvus-lite builds only FLAT and IVF_FLAT."""
    kind = choose_type(info["count"], info["dim"], memory_budget_mb) if type == "auto" else type
    if lite and kind not in LITE_TYPES:
        raise UserError(
            f"--max-memory {memory_budget_mb:.0f}MB: {info['count']} vectors need an {kind} index, which milvus-lite "
            "(a local .db URI) does not build; raise --max-memory or build on a Milvus server"
        )
    index_type, build_params, search_params = milvus_index(kind, info["dim"], info["count"])
    info.update(type=kind, index_type=index_type, params={**build_params, **search_params})
    index_params = client.prepare_index_params()
    index_params.add_index(
        field_name="vector",
        index_type=index_type,
        metric_type="IP" if info["metric"] == "cosine" else "L2",
        params=build_params,
    )
    client.create_index(info["data"], index_params)
    client.load_collection(info["data"])


def _record_schema(client: Any) -> Any:
    """The record collection: one row (key ``current``) of JSON. Milvus needs a vector field in every collection;
    the record's is a constant."""
    DataType = _pymilvus().DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("info", DataType.VARCHAR, max_length=MAX_PATH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    return schema


def _create_record(client: Any, name: str) -> None:
    index_params = client.prepare_index_params()
    index_params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=_record_schema(client), index_params=index_params, consistency_level="Strong")


def _read_record(client: Any, name: str) -> dict[str, Any]:
    """The record of collection ``name`` (which exists): the index's info with ``data``, its data collection."""
    fields = {f["name"] for f in client.describe_collection(name).get("fields", [])}
    if fields != {"key", "info", "vector"}:
        raise UserError(f"--milvus-collection {name}: not a vidret collection (build one with `vidret index build "
                        "--backend milvus`)")  # fmt: skip
    client.load_collection(name)
    rows = client.query(name, filter=f"key == {milvus_literal(RECORD_KEY)}", output_fields=["info"])
    if not rows:
        raise UserError(f"--milvus-collection {name}: its record is empty (rebuild it with --overwrite)")
    return json.loads(rows[0]["info"])


def _write_record(client: Any, name: str, info: dict[str, Any]) -> None:
    """Point the record at ``info["data"]``: one upsert of one row, which a reader sees whole or not at all."""
    client.upsert(name, [{"key": RECORD_KEY, "info": json.dumps(info), "vector": [0.0, 0.0]}])


class MilvusIndex(IndexInfo):
    """A Milvus collection of video embeddings and metadata; use ``build`` or ``open``."""

    def __init__(self, client: Any, uri: str, collection: str, info: dict[str, Any]) -> None:
        self.client, self.uri, self.collection, self.info = client, uri, collection, info
        self.data = str(info["data"])  # the data collection the record pointed at when read
        self.read_only = False  # Milvus takes writes (IndexBackend)
        self._lock = RWLock()  # an add's existence check and insert, a remove's, are one step for searches
        self._writes = 0  # since the last flush
        self._last_row = 0
        self._row_lock = threading.Lock()

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count("")

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(data collection, ...)``, a pymilvus call; a Milvus failure becomes a MilvusError naming the
        collection and Milvus's reason. When the data collection is gone because a build replaced it, the call is
        made once more on the one the record now names."""
        for attempt in (0, 1):
            try:
                return fn(self.data, *args, **kwargs)
            except _milvus_error() as exc:
                if attempt == 0 and getattr(exc, "code", None) == 100 and self._follow_record():
                    continue
                raise MilvusError(f"Milvus collection {self.collection!r}: {_first_line(exc)}") from None
        raise AssertionError("unreachable")

    def _follow_record(self) -> bool:
        """Re-read the record; True if it names another data collection, of this index's dim and metric, which is
        then served from now on."""
        try:
            info = _read_record(self.client, self.collection)
        except (UserError, _milvus_error()):
            return False
        if info["data"] == self.data or (info["dim"], info["metric"]) != (self.dim, self.metric):
            return False
        self.client.load_collection(info["data"])
        self.info, self.data = info, str(info["data"])
        return True

    # ---- build / open / save ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        emb: Embeddings | Iterable[Embeddings],
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        type: str = "auto",
        metric: str = "cosine",
        checkpoint_sha256: str | None = None,
        memory_budget_mb: float = 4096,
        overwrite: bool = False,
        token: str | None = None,
    ) -> MilvusIndex:
        """Fill a new data collection from embeddings (one ``Embeddings`` or an iterable of shards, read one at a
        time and inserted in batches), index it, then point the record ``collection`` at it (replacing an existing
        index only with ``overwrite``). A failed build drops its data collection and leaves the record, and the
        data it points at, as they were."""
        if type not in INDEX_TYPES:
            raise UserError(f"--type must be one of {', '.join(INDEX_TYPES)}, got {type!r}")
        if metric not in ("cosine", "l2"):
            raise UserError(f"--metric must be cosine or l2, got {metric!r}")
        check_collection_name(collection)
        if _local_file(uri) is not None and type not in (*LITE_TYPES, "auto"):
            raise UserError(
                f"--type {type}: milvus-lite (a local .db URI) builds only {' and '.join(LITE_TYPES)} indexes; "
                "build on a Milvus server for hnsw or ivfpq"
            )
        client = connect(uri, token)
        data = f"{collection}__{secrets.token_hex(4)}"
        made_record = False
        try:
            old = None
            if client.has_collection(collection):
                if not overwrite:
                    raise UserError(
                        f"--milvus-collection {collection}: the collection exists at {uri} (choose another name or "
                        "pass --overwrite)"
                    )
                old = _read_record(client, collection)  # refuses to replace a collection that is not ours
            info = cls._fill(client, data, [emb] if isinstance(emb, Embeddings) else emb, metric)
            info["checkpoint_sha256"] = checkpoint_sha256 or info["checkpoint_sha256"]
            info["data"] = data
            _index_data(client, info, type, memory_budget_mb, lite=_local_file(uri) is not None)
            if old is None:
                made_record = True
                _create_record(client, collection)
            _write_record(client, collection, info)
        except BaseException as exc:
            try:
                for name in [data, collection] if made_record else [data]:
                    if client.has_collection(name):
                        client.drop_collection(name)
            finally:
                disconnect(client, uri)
            if isinstance(exc, _milvus_error()):
                raise UserError(f"--milvus-uri {uri}: building {collection!r} failed ({_first_line(exc)})") from None
            raise
        try:
            if old is not None and old["data"] != data and client.has_collection(old["data"]):
                client.drop_collection(old["data"])
        except _milvus_error() as exc:
            raise UserError(
                f"--milvus-uri {uri}: built {collection!r}, but dropping the data collection it replaced, "
                f"{old['data']!r}, failed ({_first_line(exc)}); drop it by hand"
            ) from None
        finally:
            disconnect(client, uri)
        return cls.open(uri, collection, token=token)

    @staticmethod
    def _fill(client: Any, name: str, shards: Iterable[Embeddings], metric: str) -> dict[str, Any]:
        """Create collection ``name`` (no vector index yet) and insert every shard, one at a time, in batches;
        the index's record (without its type) for the collection property."""
        now = time.time()
        info: dict[str, Any] = {"format": FORMAT, "metric": metric, "dim": None, "count": 0, "checkpoint_sha256": None}
        info["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        seen: set[str] = set()
        for s in shards:
            s.validate("embeddings")
            if info["dim"] is None:
                info["dim"] = int(s.embeddings.shape[1])
                client.create_collection(name, schema=_schema(client, info["dim"]), consistency_level="Strong")
            elif s.embeddings.shape[1] != info["dim"]:
                raise UserError(f"embeddings shards differ in dimension: {s.embeddings.shape[1]} vs {info['dim']}")
            ids = [str(i) for i in s.ids]
            dup = next((i for i in ids if i in seen), None)
            if dup is not None:
                raise UserError(f"embeddings: duplicate id {dup!r}")
            seen.update(ids)
            vectors = np.ascontiguousarray(s.embeddings, dtype=np.float32)
            paths = [str(p) for p in s.paths] if s.paths is not None else [""] * len(ids)
            row = info["count"]
            for a in range(0, len(ids), INSERT_BATCH):
                b = min(a + INSERT_BATCH, len(ids))
                ents = _entities(
                    ids[a:b], range(row + a, row + b), s.labels[a:b], s.cameras[a:b], paths[a:b], now, vectors[a:b]
                )
                client.insert(name, ents)
            info["count"] += len(ids)
            info["checkpoint_sha256"] = info["checkpoint_sha256"] or s.checkpoint_sha256
        if info["dim"] is None:
            raise UserError("no embeddings to index")
        client.flush(name)
        return info

    @classmethod
    def open(cls, uri: str, collection: str = DEFAULT_COLLECTION, token: str | None = None) -> MilvusIndex:
        check_collection_name(collection)
        client = connect(uri, token)
        try:
            if not client.has_collection(collection):
                raise UserError(
                    f"--milvus-collection {collection}: no such collection at {uri} (build one with `vidret index "
                    "build --backend milvus`)"
                )
            info = _read_record(client, collection)
            if not client.has_collection(info["data"]):
                raise UserError(f"--milvus-collection {collection}: its data collection {info['data']!r} is missing "
                                "(rebuild it with --overwrite)")  # fmt: skip
            client.load_collection(info["data"])
        except _milvus_error() as exc:
            disconnect(client, uri)
            raise UserError(f"--milvus-uri {uri}: cannot open {collection!r} ({_first_line(exc)})") from None
        except BaseException:
            disconnect(client, uri)
            raise
        return cls(client, uri, collection, info)

    @property
    def dirty(self) -> bool:
        """Whether writes were made since the last flush."""
        return self._writes > 0

    def save(self) -> None:
        """Flush: Milvus seals the collection's growing segments (acknowledged writes are durable already)."""
        with self._lock.read():
            writes = self._writes
        self._call(self.client.flush)
        with self._lock.write():
            self._writes -= writes

    def close(self) -> None:
        """Close the connection (twice is harmless); on milvus-lite the last one of this process stops the server."""
        if self.client is not None:
            client, self.client = self.client, None
            disconnect(client, self.uri)

    # ---- reads ----------------------------------------------------------------------------------------------
    def _query(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """The entities of ``ids`` that exist (an id with a line break cannot: add and build refuse it)."""
        ids = [str(i) for i in ids if not any(c in str(i) for c in LINE_BREAKS)]
        if not ids:
            return []
        expr = f"id in [{', '.join(milvus_literal(i) for i in ids)}]"
        return self._call(self.client.query, filter=expr, output_fields=fields)

    def get(self, vid: str) -> VideoMeta | None:
        found = self._query([vid], META_FIELDS)
        return _meta(found[0]) if found else None

    def vector(self, vid: str) -> np.ndarray | None:
        found = self._query([vid], ["vector"])
        return np.asarray(found[0]["vector"], dtype=np.float32) if found else None

    def _count(self, where: str) -> int:
        res = self._call(self.client.query, filter=where, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def _iterate(self, fields: list[str], where: str = "") -> Iterator[dict[str, Any]]:
        """Every entity (that matches ``where``), in batches by primary key: the next batch is the ids after the
        last one, written as an escaped literal. (pymilvus' query_iterator writes that cursor unescaped, so an id
        with a quote would break it, and against milvus-lite it logs a failed timestamp call on every use.) The
        query options are those the iterator sends: with them Milvus answers the smallest ids past the cursor, in
        order."""
        cursor: str | None = None
        while True:
            after = 'id >= ""' if cursor is None else f"id > {milvus_literal(cursor)}"
            batch = self._call(
                self.client.query,
                filter=f"({where}) and {after}" if where else after,
                output_fields=sorted({"id", *fields}),
                limit=ITER_BATCH,
                iterator="True",
                reduce_stop_for_best="True",
                batch_size=ITER_BATCH,
            )
            if not batch:
                return
            yield from batch
            cursor = max(str(e["id"]) for e in batch)

    def ids(self) -> list[str]:
        """Every id, in the index's order (build order, then adds)."""
        return [e["id"] for e in sorted(self._iterate(["id", "row"]), key=lambda e: (e["row"], e["id"]))]

    def page(self, offset: int = 0, limit: int | None = None) -> list[VideoMeta]:
        """The entries from ``offset`` on (at most ``limit``; all with None), in the order of ``ids()``, without
        reading every entry: Milvus 2.5 cannot sort a query by ``row``, but it counts the rows below a value, so a
        search over row values (``_bracket``) finds a row range that holds the page and at most 2 * PAGE_SLACK
        more, which is read and sorted. Counting and reading are separate requests: a listing made while another
        process writes may be off by those writes, as two listings would be."""
        total = self.count
        end = total if limit is None else min(total, offset + limit)
        if offset >= end:
            return []
        hints = [int(self.info["count"]), _ns(self.created) - 86_400 * 10**9, time.time_ns() + 86_400 * 10**9]
        a, ca, hi, chi = self._bracket(offset, False, (0, 0, TOP_ROW, total), hints)
        _, _, b, cb = self._bracket(end, True, (a, ca, hi, chi) if chi >= end else (a, ca, TOP_ROW, total), hints)
        where = " and ".join(w for w, on in ((f"row >= {a}", a > 0), (f"row < {b}", b < TOP_ROW)) if on)
        window = sorted(self._iterate(META_FIELDS, where), key=lambda e: (e["row"], e["id"]))
        return [_meta(e) for e in window[offset - ca : end - ca]]

    def _bracket(
        self, target: int, upper: bool, start: tuple[int, int, int, int], hints: list[int]
    ) -> tuple[int, int, int, int]:
        """Narrow the row range ``[lo, hi)``, where ``c(lo) <= target <= c(hi)`` for ``c(x)``, the number of rows
        below ``x``, until ``c(lo)`` (``c(hi)`` when ``upper``) is within PAGE_SLACK of ``target``. Each step
        counts once below a hint (the build's size, the times around the index's life: where build rows end and
        added rows are), an interpolation of ``c``, or the middle, taking turns, so that it needs at most about
        twice the steps of a bisection, and a few where rows are spread evenly."""
        lo, clo, hi, chi = start
        step = 0
        while (chi - target if upper else target - clo) > PAGE_SLACK and hi - lo > 1:
            m = next((h for h in hints if lo < h < hi), None)
            if m is None:
                m = lo + (hi - lo) * (target - clo) // max(chi - clo, 1) if step % 2 == 0 else (lo + hi) // 2
                step += 1
            m = min(max(m, lo + 1), hi - 1)
            c = self._count(f"row < {m}")
            if (c >= target) if upper else (c > target):
                hi, chi = m, c
            else:
                lo, clo = m, c
        return lo, clo, hi, chi

    def snapshot(self) -> tuple[list[VideoMeta], np.ndarray]:
        """All entries and their vectors, in the index's order (for exact evaluation)."""
        with self._lock.read():
            ents = sorted(self._iterate([*META_FIELDS, "vector"]), key=lambda e: (e["row"], e["id"]))
        metas = [_meta(e) for e in ents]
        vecs = (
            np.asarray([e["vector"] for e in ents], dtype=np.float32) if ents else np.zeros((0, self.dim), np.float32)
        )
        return metas, vecs

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_ids: Sequence[str | None] | None = None,
        filter: SearchFilter | dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """As VideoIndex.search; a filter is a Milvus boolean expression of escaped literals."""
        q = checked_queries(vectors, k, self.dim)
        flt = SearchFilter.of(filter)
        limit = k + (1 if exclude_ids is not None else 0)
        params = {k_: v for k_, v in self.info.get("params", {}).items() if k_ in ("nprobe", "ef")}
        if "ef" in params:
            params["ef"] = max(params["ef"], limit)  # Milvus needs ef >= limit
        with self._lock.read():
            found = self._call(
                self.client.search,
                data=q.tolist(),
                limit=limit,
                filter=flt.milvus_expr() if flt else "",
                output_fields=["label", "camera"],
                search_params={"metric_type": "IP" if self.metric == "cosine" else "L2", "params": params},
                anns_field="vector",
            )
        out = []
        for qi, res in enumerate(found):
            skip = exclude_ids[qi] if exclude_ids is not None else None
            kept = [h for h in res if h["id"] != skip][:k]
            scores = to_scores(np.array([h["distance"] for h in kept], np.float32), self.metric)  # L2: squared
            out.append(
                [
                    Hit(str(h["id"]), float(s), str(h["entity"]["label"]), str(h["entity"]["camera"]))
                    for h, s in zip(kept, scores.tolist(), strict=True)
                ]
            )
        return out

    # ---- writes (acknowledged by Milvus on return) ----------------------------------------------------------------
    def _next_rows(self, n: int) -> list[int]:
        """Rows of new entries: after every row this process gave, and in time order across processes."""
        with self._row_lock:
            first = max(time.time_ns(), self._last_row + 1)
            self._last_row = first + n - 1
        return list(range(first, first + n))

    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        labels: Sequence[str],
        cameras: Sequence[str],
        paths: Sequence[str],
    ) -> None:
        vectors = checked_vectors(vectors, len(ids), self.dim)
        ents = _entities(ids, self._next_rows(len(ids)), labels, cameras, paths, time.time(), vectors)
        with self._lock.write():
            dup = [e["id"] for e in self._query(ids, ["id"])]
            if dup or len(set(ids)) != len(ids):
                raise DuplicateIdError(f"id {dup[0] if dup else ids[0]!r} already exists")
            self._call(self.client.insert, ents)
            self._writes += 1

    def remove(self, ids: Sequence[str]) -> None:
        with self._lock.write():
            known = {e["id"] for e in self._query(ids, ["id"])}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise UnknownIdError(f"unknown id {unknown[0]!r}")
            expr = f"id in [{', '.join(milvus_literal(str(i)) for i in ids)}]"
            self._call(self.client.delete, filter=expr)
            self._writes += 1
