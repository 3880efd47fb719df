"""A TLS terminator for the development Orthanc: HTTPS on one loopback port, forwarded as plain HTTP to
Orthanc's own port on loopback.

Why it exists: the Orthanc 1.10.1 the local stack and the tests run (Debian bookworm's package, built on
Debian's libcivetweb 1.15) crashes on the first TLS handshake with SslEnabled (a null OpenSSL function in
CivetWeb's worker thread, seen under gdb), so its own HTTPS cannot be used. A hospital's Orthanc (the chart's
orthancteam/orthanc image) terminates TLS itself: the chart sets SslEnabled. Clients see the same thing
either way: HTTPS with a certificate of the site's CA, optionally asking for theirs.

Run as ``python -m neuroflow.devtools.tls_proxy --listen PORT --target PORT --certificate PEM [--client-ca CA]``
(the PEM holds certificate and key; with --client-ca only clients presenting a certificate signed by it
connect). Orthanc's own port stays loopback-only and still demands credentials on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
from typing import Any

_CHUNK = 64 * 1024


def server_context(certificate: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS 1.2 or newer with the given certificate; client certificates required when ``client_ca`` is set."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: int, target: int, context: ssl.SSLContext) -> None:
    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    loop = asyncio.get_running_loop()
    # A client that fails the handshake (no or a wrong certificate, plain HTTP) is its own problem: no traceback.
    loop.set_exception_handler(lambda _loop, _context: None)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(forward, "127.0.0.1", listen, ssl=context)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--certificate", required=True, help="PEM file: certificate, then private key")
    parser.add_argument("--client-ca", default=None, help="require client certificates signed by this CA")
    args: Any = parser.parse_args(argv)
    asyncio.run(serve(args.listen, args.target, server_context(args.certificate, args.client_ca)))


if __name__ == "__main__":
    main()
