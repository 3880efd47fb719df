#!/usr/bin/env python3
"""Is a Kafka broker serving requests? Asks it for cluster metadata (Metadata v4, all topics) and for
its consumer-group coordinator (FindCoordinator v1), and succeeds only when the metadata lists the
broker at the address asked and names a controller, and the coordinator is available. Asking makes a new
broker create its offsets topic now, so the first consumer group does not wait seconds for it later.

Standard library only: scripts/kafka.sh uses it while the broker starts, before any virtual
environment exists. Exit 0 when ready, 1 when not (the reason on stderr).

    python3 scripts/kafka_probe.py 127.0.0.1 19092 [--timeout 2]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

METADATA = (3, 4)  # (api key, version): non-flexible encodings that Kafka 1.0 to 4.x serve
FIND_COORDINATOR = (10, 1)
PROBE_GROUP = b"neuroflow-probe"  # the group asked about; nothing is created under it


class Reader:
    """Reads big-endian Kafka primitive types from a response body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        text = self.data[self.at:self.at + length].decode()
        self.at += length
        return text


def request(sock: socket.socket, api: tuple[int, int], body: bytes, correlation_id: int) -> Reader:
    """Send one request (header v1) and read its answer; the Reader starts after the correlation id."""
    client_id = b"neuroflow-probe"
    header = struct.pack(">hhih", *api, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", receive_exactly(sock, 4))
    reader = Reader(receive_exactly(sock, size))
    if reader.int32() != correlation_id:
        raise ConnectionError("the answer does not match the request")
    return reader


def receive_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        chunk = sock.recv(count - len(chunks))
        if not chunk:
            raise ConnectionError("the broker closed the connection before answering")
        chunks.extend(chunk)
    return bytes(chunks)


def probe(host: str, port: int, timeout_s: float) -> str | None:
    """None when the broker at host:port is ready for producers and consumer groups, else why not."""
    all_topics_never_create = struct.pack(">i?", -1, False)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            metadata = request(sock, METADATA, all_topics_never_create, correlation_id=1)
            problem = check_metadata(metadata, host, port)
            if problem:
                return problem
            group_key = struct.pack(">h", len(PROBE_GROUP)) + PROBE_GROUP + struct.pack(">b", 0)  # key type: group
            answer = request(sock, FIND_COORDINATOR, group_key, correlation_id=2)
            answer.int32()  # throttle_time_ms
            error_code = answer.int16()
            if error_code != 0:
                return f"no consumer-group coordinator yet (Kafka error code {error_code}: {answer.string()})"
    except OSError as error:
        return f"no answer from {host}:{port}: {error}"
    return None


def check_metadata(reader: Reader, host: str, port: int) -> str | None:
    reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(reader.int32()):
        reader.int32()  # node_id
        broker_host, broker_port = reader.string(), reader.int32()
        reader.string()  # rack
        brokers.append((broker_host, broker_port))
    reader.string()  # cluster_id
    controller_id = reader.int32()
    if (host, port) not in brokers:
        return f"the broker does not list itself yet (brokers: {brokers})"
    if controller_id < 0:
        return "the cluster has no active controller yet"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds for connect and answer")
    args = parser.parse_args()
    problem = probe(args.host, args.port, args.timeout)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
