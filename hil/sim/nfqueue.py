"""A netfilter-queue daemon that delays and drops packets: ``tc netem`` in user space.

Used when the kernel lacks ``sch_netem`` (as on our CI VMs).  iptables NFQUEUE rules
send the veth's packets, both directions, to queue N; this daemon holds each
one for ``--delay-ms`` before accepting it, and drops ``--loss-pct`` percent.
Pure stdlib: it speaks nfnetlink over a raw netlink socket.

Run: ``python3 -m hil.sim.nfqueue --queue 4213 --delay-ms 20 --loss-pct 0 --pidfile F``
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NF_DROP = 0
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(msg: int, queue: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return
        yield kind & 0x3FFF, data[off + 4 : off + length]
        off += (length + 3) & ~3


class PacketDelayer:
    """Binds one netfilter queue and gives each packet its verdict after a delay."""

    def __init__(self, queue: int, delay_ms: float, loss_pct: float) -> None:
        self.queue = queue
        self.delay = delay_ms / 1000.0
        self.loss = loss_pct / 100.0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind((0, 0))
        self.seq = 0
        self.pending: list[tuple[float, int]] = []
        self.rng = random.Random()
        self._bind()

    def _send(self, msg: int, attrs: bytes) -> None:
        self.seq += 1
        self.sock.send(_message(msg, self.queue, attrs, self.seq))

    def _bind(self) -> None:
        cmd = struct.pack("=BxH", NFQNL_CFG_CMD_BIND, socket.htons(socket.AF_UNSPEC))
        self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_CMD, cmd))
        params = struct.pack("!IB", 0, NFQNL_COPY_META)
        self._send(NFQNL_MSG_CONFIG, _attr(NFQA_CFG_PARAMS, params))

    def verdict(self, packet_id: int, verdict: int) -> None:
        """Accept or drop the queued packet ``packet_id``."""
        self._send(NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))

    def _receive(self) -> None:
        data = self.sock.recv(1 << 20)
        off = 0
        now = time.monotonic()
        while off + 16 <= len(data):
            length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                for attr, payload in _attrs(data[off + 20 : off + length]):
                    if attr == NFQA_PACKET_HDR:
                        (packet_id,) = struct.unpack_from("!I", payload)
                        if self.loss and self.rng.random() < self.loss:
                            self.verdict(packet_id, NF_DROP)
                        else:
                            heapq.heappush(self.pending, (now + self.delay, packet_id))
            elif kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", data, off + 16)
                if errno:
                    raise OSError(-errno, f"nfnetlink: {os.strerror(-errno)}")
            off += (length + 3) & ~3

    def serve(self) -> None:
        """Deliver due verdicts and receive new packets, forever."""
        while True:
            now = time.monotonic()
            while self.pending and self.pending[0][0] <= now:
                _, packet_id = heapq.heappop(self.pending)
                self.verdict(packet_id, NF_ACCEPT)
            timeout = max(0.0, self.pending[0][0] - now) if self.pending else 1.0
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if ready:
                self._receive()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the daemon."""
    parser = argparse.ArgumentParser(prog="python3 -m hil.sim.nfqueue")
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss-pct", type=float, default=0.0)
    parser.add_argument("--pidfile", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    delayer = PacketDelayer(args.queue, args.delay_ms, args.loss_pct)
    # The pid file is written once the queue is bound: its presence means "ready".
    tmp = args.pidfile.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(args.pidfile)
    try:
        delayer.serve()
    finally:
        args.pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
