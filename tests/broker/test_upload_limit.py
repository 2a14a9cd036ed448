"""The payload limit stops an upload while it streams, long before all of it has arrived."""

import select
import socket

from brokerkit import Broker, ServerThread, broker_settings


def test_oversized_upload_is_refused_before_it_is_all_sent(database_url, tmp_path):
    limit = 256 * 1024
    settings = broker_settings(database_url, tmp_path / "data", max_payload_bytes=limit)
    with ServerThread(settings) as server:
        teacher = Broker(server.url, settings, "").teacher()
        boundary = "m2ktboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="payload"; filename="p"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        request = (
            f"POST /v1/packets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {teacher.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        chunk = b"\0" * 65536
        total_planned = 64 * 1024 * 1024
        sent = 0
        response = b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            try:
                while sent < total_planned:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:
                        break
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(10)
            try:
                while b"\r\n\r\n" not in response:
                    data = sock.recv(65536)
                    if not data:
                        break
                    response += data
            except ConnectionResetError:
                pass
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"payload-too-large" in response or b"content-length" in response.lower()
        assert sent < total_planned // 4, f"sent {sent} bytes before the refusal"
    assert list((tmp_path / "data" / "tmp").iterdir()) == []
