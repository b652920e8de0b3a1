"""SSE listeners for the fan-out benchmark: many streams of one organization in one process.

    python -m bench.sse_clients --url http://127.0.0.1:PORT --streams 500 --out FILE
    (BENCH_API_TOKEN in the environment; stops when its stdin closes)

Raw asyncio sockets rather than an HTTP client library, so one Python process keeps up
with hundreds of streams: each read is scanned with one regular expression for the frame's
id and the message SID in its payload. Prints ``READY <n>`` once every stream has its
response headers, then records when each SID arrived on each stream (wall clock, compared
by the runner with the time the webhook was accepted), and checks per stream that ids only
increase and no SID arrives twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

FRAME = re.compile(rb'id: (\d+)\r?\nevent: [^\r\n]*\r?\ndata: [^\r\n]*?"external_id": "(\w+)"')


class Stats:
    def __init__(self) -> None:
        self.receipts: dict[str, list[float]] = defaultdict(list)
        self.frames = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.ended_by_server = 0
        self.failed = 0


async def stream(host: str, port: int, token: str, stats: Stats, ready: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    except OSError:
        stats.failed += 1
        ready.set()
        return
    writer.write(
        f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        stats.failed += 1
        ready.set()
        return
    ready.set()
    last_id = 0
    seen: set[bytes] = set()
    buffer = b""
    try:
        while chunk := await reader.read(65536):
            now = time.time()
            buffer += chunk
            cut = buffer.rfind(b"\r\n\r\n")  # frames end with a blank line (CRLF)
            if cut < 0:
                continue
            complete, buffer = buffer[: cut + 4], buffer[cut + 4 :]
            for event_id, sid in FRAME.findall(complete):
                stats.frames += 1
                number = int(event_id)
                if number <= last_id:
                    stats.out_of_order += 1
                last_id = number
                if sid in seen:
                    stats.duplicates += 1
                    continue
                seen.add(sid)
                stats.receipts[sid.decode()].append(now)
        stats.ended_by_server += 1
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    token = os.environ["BENCH_API_TOKEN"]
    stats = Stats()
    tasks = []
    for wave in range(0, args.streams, 50):  # connect in waves: the server authenticates each
        readies = []
        for _ in range(min(50, args.streams - wave)):
            ready = asyncio.Event()
            readies.append(ready)
            tasks.append(asyncio.create_task(stream(host, port, token, stats, ready)))
        await asyncio.gather(*(r.wait() for r in readies))
    print(f"READY {args.streams - stats.failed}", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the runner closes stdin when it is done
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": args.streams,
        "failed": stats.failed,
        "frames": stats.frames,
        "out_of_order": stats.out_of_order,
        "duplicates": stats.duplicates,
        "ended_by_server": stats.ended_by_server,
        "receipts": stats.receipts,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    with open(args.out, "w") as sink:
        json.dump(result, sink)


if __name__ == "__main__":
    main()
