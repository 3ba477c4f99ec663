"""The HTTP fast lane against a real node, on raw sockets: what it serves itself, what it hands
to aiohttp, and that a client sees one answer per request, in order, whichever served it.

Requests are written as bytes so the tests choose exactly how they arrive: several in one
write (pipelined), one byte at a time, with unusual framing, or malformed. Each answer is read
whole (head and ``Content-Length`` body) and checked for the route that should answer it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httptools
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.support.nodeproc import NodeProcess
from unimeter import current_month
from unimeter.json_model import time_text
from unimeter.server.http.fastlane import FastRequest, _end_of

METRIC = b'{"code":"calls","agg_type":"sum","period_type":"calendar"}'  # read from its row


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path, len(body), extra, body)  # fmt: skip


def get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, extra)


USAGE = get(b"/v1/usage?account_id=7&metric=calls")
METRICS = get(b"/v1/metrics")
HEALTH = get(b"/health")


def events(*values: int) -> bytes:
    lines = [orjson.dumps({"account_id": 7, "metric_code": "calls", "value": v}) for v in values]
    return post(b"/v1/events", b"\n".join(lines))


class Conn:
    """One keep-alive connection, read answer by answer."""

    def __init__(self, node: NodeProcess) -> None:
        host, port = node.http_url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes, *, byte_by_byte: bool = False) -> None:
        if not byte_by_byte:
            self.sock.sendall(data)
            return
        # Paced, not waited on: with a pause after each, most bytes reach the node in reads of
        # their own, so requests are parsed from many partial reads.
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            time.sleep(0.0005)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the node closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(http_node: NodeProcess) -> Iterator[Conn]:
    """A fresh connection (the fast lane's until a request for aiohttp), the metric made."""
    maker = Conn(http_node)
    maker.send(post(b"/v1/metrics", METRIC, b"Content-Type: application/json\r\n"))
    assert maker.answer()[0] == 201
    maker.close()
    c = Conn(http_node)
    yield c
    c.close()


def usage_sum(c: Conn) -> int:
    c.send(USAGE)
    status, _, body = c.answer()
    assert status == 200, body
    return int(orjson.loads(body)["value"]["sum"])


def test_one_connection_mixes_fast_and_handed_over_requests(conn: Conn) -> None:
    # Each request alone: ingest and usage on the fast lane, then the metric list (aiohttp
    # from then on), then ingest and usage again, now served by aiohttp.
    conn.send(events(1, 2))
    status, headers, body = conn.answer()
    assert status == 200 and orjson.loads(body)["n_stored"] == 2
    assert headers["content-type"] == "application/json" and "date" in headers
    assert usage_sum(conn) == 3
    conn.send(METRICS)
    status, _, body = conn.answer()
    assert status == 200 and orjson.loads(body)["metrics"][0]["code"] == "calls"
    conn.send(events(10))
    assert conn.answer()[0] == 200
    assert usage_sum(conn) == 13


def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    # Ingests still being stored when later requests are read; a request for aiohttp in
    # between: every answer comes back in the order of the requests.
    conn.send(events(1) + USAGE + events(2, 3) + METRICS + events(4) + USAGE + HEALTH)
    answers = [conn.answer() for _ in range(7)]
    assert [a[0] for a in answers] == [200] * 7
    bodies = [orjson.loads(a[2]) for a in answers]
    assert [bodies[i]["n_stored"] for i in (0, 2, 4)] == [1, 2, 1]
    assert "metrics" in bodies[3] and bodies[6]["status"] == "ok"
    # A read is answered after the writes before it on the connection were acknowledged.
    assert bodies[1]["value"]["sum"] == 1
    assert bodies[5]["value"]["sum"] == 10


def test_requests_arriving_byte_by_byte(conn: Conn) -> None:
    conn.send(events(5) + USAGE, byte_by_byte=True)
    assert orjson.loads(conn.answer()[2])["n_stored"] == 1
    assert orjson.loads(conn.answer()[2])["value"]["sum"] == 5
    conn.send(METRICS, byte_by_byte=True)  # handed over with its first bytes split apart
    assert conn.answer()[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        # Chunked framing and 100-continue: aiohttp's, and both store the events.
        b"POST /v1/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3c\r\n"
        + b'{"account_id":7,"metric_code":"calls","value":4}'
        + b" " * 12
        + b"\r\n0\r\n\r\n",
        events(4).replace(b"Host: t\r\n", b"Host: t\r\nExpect: 100-continue\r\n"),
    ],
    ids=["chunked", "expect-100"],
)
def test_unusual_framing_goes_to_aiohttp(conn: Conn, request_bytes: bytes) -> None:
    conn.send(request_bytes)
    status, _, body = conn.answer()
    if status == 100:  # the interim answer to Expect: 100-continue
        status, _, body = conn.answer()
    assert status == 200 and orjson.loads(body)["n_stored"] == 1, body
    assert usage_sum(conn) == 4


def test_http_1_0_and_connection_close(http_node: NodeProcess, conn: Conn) -> None:
    for request in (
        USAGE.replace(b"HTTP/1.1", b"HTTP/1.0"),
        USAGE.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n"),
    ):
        c = Conn(http_node)
        c.send(request)
        status, _, body = c.answer()
        assert status == 200 and orjson.loads(body)["value"]["sum"] == 0
        assert c.closed()  # as the request asked
        c.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /v1/usage?account_id=7&metric=calls HTTP/1.1\r\nHost: t\r\nX-Long: "
        + b"a" * 70_000
        + b"\r\n\r\n",
        b"GET /v1/usage?account_id=7&metric=calls HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # TLS to a plain port
        post(b"/v1/events", b"x" * 10, b"Content-Length: 11\r\n"),  # two lengths
    ],
    ids=["long-head", "bad-header", "tls-hello", "two-lengths"],
)
def test_malformed_requests_are_refused_and_the_node_serves_on(
    http_node: NodeProcess, conn: Conn, bad: bytes
) -> None:
    c = Conn(http_node)
    c.send(USAGE + bad)  # after one good request on the same connection
    assert orjson.loads(c.answer()[2])["value"]["sum"] == 0
    try:
        status, _, _ = c.answer()
        assert 400 <= status < 500
    except ConnectionError:
        pass  # refused by closing, as aiohttp does some malformed requests
    c.close()
    assert usage_sum(conn) == 0  # every other connection is served as before


def test_errors_on_the_fast_lane_are_problems(conn: Conn) -> None:
    conn.send(get(b"/v1/usage?account_id=7&metric=nope"))
    status, headers, body = conn.answer()
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["code"] == "UNKNOWN_METRIC"
    conn.send(get(b"/v1/usage?account_id=x&metric=calls"))
    assert conn.answer()[0] == 400
    conn.send(post(b"/v1/events", b'{"account_id": 7}'))
    status, _, body = conn.answer()
    assert status == 400 and "metric code" in orjson.loads(body)["detail"]
    assert usage_sum(conn) == 0


# ---------------------------------------------------------------------- finding a boundary

_request = st.one_of(
    st.builds(lambda n: get(b"/v1/usage?account_id=%d&metric=calls" % n), st.integers(0, 10**6)),
    st.builds(lambda b: post(b"/v1/events", b), st.binary(max_size=300)),
    st.just(METRICS),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_request, min_size=1, max_size=6), st.data())
def test_end_of_finds_where_pipelined_requests_end(
    requests: list[bytes], data: st.DataObject
) -> None:
    raw = b"".join(requests)
    tail = data.draw(st.binary(max_size=20))  # the start of a further request, or junk
    k = data.draw(st.integers(1, len(requests)))
    assert _end_of(raw + tail, k) == sum(map(len, requests[:k]))


def test_the_parser_completes_a_request_at_its_last_byte() -> None:
    # What _end_of relies on: llhttp reports a request complete once its last byte is in.
    class Count:
        complete = 0

        def on_message_complete(self) -> None:
            self.complete += 1

    for request in (USAGE, events(1, 2)):
        counter = Count()
        parser = httptools.HttpRequestParser(counter)
        parser.feed_data(request[:-1])
        assert counter.complete == 0
        parser.feed_data(request[-1:])
        assert counter.complete == 1


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab=&+%2F0;é #?", max_size=30))
def test_query_parameters_are_read_as_aiohttp_reads_them(query: str) -> None:
    target = "/v1/usage?" + query
    fast = FastRequest("GET", target, [], b"", None).query
    path, _, rest = target.partition("?")
    rest, _, fragment = rest.partition("#")
    seen_by_aiohttp = URL.build(path=path, query_string=rest, fragment=fragment, encoded=True)
    assert list(fast.items()) == list(seen_by_aiohttp.query.items())


def test_requests_read_ahead_are_dropped_when_the_client_goes(
    http_node: NodeProcess, conn: Conn
) -> None:
    # Twenty ingests written at once, then the connection closed before any answer: the one
    # being served may be stored, the ones read ahead are not (their client saw no answer and
    # may send them again; aiohttp drops them too).
    gone = Conn(http_node)
    gone.send(events(1) * 20)
    gone.sock.close()
    # The one being served is stored: wait for it. Then the rest must never be: watch for a
    # while (a bug storing them would have stored several within it; each takes milliseconds).
    deadline = time.monotonic() + 10
    while usage_sum(conn) == 0:
        assert time.monotonic() < deadline, "the ingest being served was never stored"
    watch_until = time.monotonic() + 0.5
    while time.monotonic() < watch_until:
        assert usage_sum(conn) == 1


def test_a_body_over_the_limit_is_refused(http_node: NodeProcess, conn: Conn) -> None:
    # Declared beyond the body limit: handed to aiohttp, which refuses it (413) as it refuses
    # any body over the limit; the node serves on.
    body = b"[" + b" " * (32 << 20) + b"]"  # two bytes over: sent whole before the refusal
    big = Conn(http_node)
    try:
        big.send(post(b"/v1/events", body))
        status, _, answer = big.answer()
        assert status == 413 and orjson.loads(answer)["code"] == "INVALID_REQUEST"
    finally:
        big.close()
    assert usage_sum(conn) == 0


def test_a_long_pipeline_waits_for_its_answers(conn: Conn) -> None:
    # More requests read ahead than the lane queues, and more bytes than one read takes:
    # reading pauses behind the ingest being stored and resumes once the queue is served.
    many = 5000
    conn.send(events(1) + USAGE * many + events(2) + USAGE)
    answers = [orjson.loads(conn.answer()[2]) for _ in range(many + 3)]
    assert answers[0]["n_stored"] == 1 and answers[many + 1]["n_stored"] == 1
    assert {a["value"]["sum"] for a in answers[1 : many + 1]} == {1}
    assert answers[many + 2]["value"]["sum"] == 3


def test_realtime_usage_on_the_lane_reads_as_aiohttp_does(
    http_node: NodeProcess, conn: Conn
) -> None:
    realtime = get(b"/v1/usage/realtime?account_id=7&metric=calls")
    # A realtime read does not wait for the connection's earlier writes (as in the binary
    # protocol); a SYNC ingest is applied by the time it is answered.
    conn.send(events(3, 4).replace(b"/v1/events", b"/v1/events?delivery=sync") + realtime)
    assert conn.answer()[0] == 200
    status, headers, lane_body = conn.answer()
    assert status == 200 and headers["content-type"] == "application/json"
    lane = orjson.loads(lane_body)
    assert lane["value"]["sum"] == 7 and lane["value"]["count"] == 2
    month = current_month()  # the metric's periods are calendar months
    assert (lane["period_start"], lane["period_end"]) == (
        time_text(month.start), time_text(month.end))  # fmt: skip
    handed = Conn(http_node)  # a connection aiohttp serves from its first request on
    handed.send(METRICS + realtime)
    handed.answer()
    assert orjson.loads(handed.answer()[2]) == lane
    handed.close()
    unknown = get(b"/v1/usage/realtime?account_id=7&metric=nope")
    conn.send(unknown)
    status, _, body = conn.answer()
    assert status == 404 and orjson.loads(body)["code"] == "UNKNOWN_METRIC"
