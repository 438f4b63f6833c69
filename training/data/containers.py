"""Container types of video files told apart by their first bytes, and the FFmpeg demuxer each is read with.
Imports no torch: the service's upload checks and the numpy decoding of training/data/npclip.py use it too."""

from __future__ import annotations

from pathlib import Path

# Container types told apart by their first bytes (sniff_container), and the FFmpeg demuxer each is read with.
CONTAINER_DEMUXERS = {
    ".mp4": "mov",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "matroska",
    ".avi": "avi",
    ".mpg": "mpeg",
    ".ts": "mpegts",
}
CONTAINER_NAMES = "mp4, mov, mkv, webm, avi, mpeg-ps, mpeg-ts"
SNIFF_BYTES = 4096
TS_PACKET = 188
TS_MIN_PACKETS = 3


def sniff_container(head: bytes) -> str | None:
    """The container type of a file from its first bytes (``SNIFF_BYTES`` of them, or the whole file if shorter),
    as a file extension (one of ``CONTAINER_DEMUXERS``), or None when it is none of them."""
    if head[4:8] == b"ftyp":  # ISO base media: mp4, m4v, mov (brand "qt  "), 3gp
        return ".mov" if head[8:12] == b"qt  " else ".mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM by its DocType
        return ".webm" if b"\x42\x82\x84webm" in head[:64] else ".mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[:4] == b"\x00\x00\x01\xba":  # MPEG program stream pack header
        return ".mpg"
    # MPEG transport stream: a sync byte 0x47 starting every 188-byte packet, checked over the bytes given
    packets = (len(head) + TS_PACKET - 1) // TS_PACKET
    if packets >= TS_MIN_PACKETS and all(head[k * TS_PACKET] == 0x47 for k in range(packets)):
        return ".ts"
    return None


def sniff_file(path: str | Path) -> str | None:
    with open(path, "rb") as fh:
        return sniff_container(fh.read(SNIFF_BYTES))


def av_scale_graph(frame, time_base, size: tuple[int, int]):
    """FFmpeg's scale filter with bilinear flags, then RGB24 (a PyAV filter graph for ``frame``'s stream): how
    decord resizes at decode time, bit for bit. ``size`` is (height, width). Used by training/data/video.py's PyAV
    path and by the torch-free decoding of training/data/npclip.py."""
    from itertools import pairwise

    from av.filter import Graph

    graph = Graph()
    chain = [
        graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=time_base),
        graph.add("scale", f"{size[1]}:{size[0]}:flags=bilinear"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in pairwise(chain):
        a.link_to(b)
    graph.configure()
    return graph
