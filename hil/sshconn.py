"""One SSH connection to a board: ssh_config resolution, strict host keys, commands.

Built on paramiko's :class:`~paramiko.transport.Transport` rather than
``SSHClient`` so that we control every step OpenSSH users expect:

* the target's host alias is resolved through ``~/.ssh/config`` (or the
  target's ``ssh.config``): HostName, User, Port, IdentityFile,
  IdentitiesOnly, ProxyJump, ProxyCommand, UserKnownHostsFile,
  HostKeyAlias, ConnectTimeout, ServerAliveInterval/CountMax;
* the host key is checked against known_hosts and never added: an unknown
  host is refused with its fingerprint and the command that trusts it, a
  changed key is refused loudly (:class:`~hil.errors.HostKeyError`);
* a liveness probe (``keepalive@openssh.com`` with a reply, like OpenSSH's
  ServerAlive*) closes the transport when the board stops answering, so a
  cut link surfaces as a lost connection in seconds instead of TCP's minutes.

One :class:`SshConnection` serves a whole session: commands run on their own
channels of the same transport, concurrently when they are independent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from hil.errors import AuthRefusedError, HilError, HostKeyError, UnreachableError
from hil.sshbase import (
    DEFAULT_ALIVE_COUNT,
    DEFAULT_ALIVE_INTERVAL,
    DEFAULT_KNOWN_HOSTS,
    Channel,
    Connection,
    ConnectionLostError,
    SshEndpoint,
)

#: Key files OpenSSH tries when the config names none.
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
def _split_destination(text: str) -> tuple[str, str, int]:
    """``user@host:port`` (or ``ssh://user@host:port``) -> (user, host, port)."""
    text = text.removeprefix("ssh://")
    user, _, rest = text.rpartition("@")
    port = 0
    if rest.startswith("["):  # [v6]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":") and tail[1:].isdigit():
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, _, p = rest.partition(":")
        port = int(p) if p.isdigit() else 0
    else:
        host = rest
    return user, host, port


def _read_config(config_file: str) -> paramiko.SSHConfig:
    path = Path(os.path.expanduser(config_file or "~/.ssh/config"))
    if not path.is_file():
        if config_file:
            raise HilError(f"ssh config file {config_file} does not exist")
        return paramiko.SSHConfig.from_text("")
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.ConfigParseError) as err:
        raise HilError(f"cannot read ssh config {path}: {err}") from err


def resolve_endpoint(host: str, *, config_file: str = "", user: str = "", port: int = 0,
                     connect_timeout: float = 10.0) -> SshEndpoint:
    """Resolve ``host`` (an alias, ``host``, ``user@host:port``) through ssh_config.

    Explicit ``user``/``port`` (from the target's TOML) win over the config,
    as ``ssh -l``/``-p`` do; ConnectTimeout in the config wins over the default.
    """
    d_user, d_host, d_port = _split_destination(host)
    cfg = _read_config(config_file).lookup(d_host)

    def first(key: str) -> str:
        value = cfg.get(key, "")
        return str(value[0] if isinstance(value, list) else value)

    def many(key: str) -> tuple[str, ...]:
        value: Any = cfg.get(key, [])
        items: list[str] = value if isinstance(value, list) else str(value).split()
        return tuple(os.path.expanduser(v) for v in items if v and v.lower() != "none")

    known = tuple(p for p in many("userknownhostsfile") if p != "/dev/null")
    timeout = connect_timeout
    if first("connecttimeout").isdigit():
        timeout = float(first("connecttimeout"))
    interval = DEFAULT_ALIVE_INTERVAL
    if first("serveraliveinterval").isdigit() and int(first("serveraliveinterval")) > 0:
        interval = float(first("serveraliveinterval"))
    count = DEFAULT_ALIVE_COUNT
    if first("serveralivecountmax").isdigit() and int(first("serveralivecountmax")) > 0:
        count = int(first("serveralivecountmax"))
    proxy_jump = first("proxyjump")
    return SshEndpoint(
        alias=d_host,
        hostname=first("hostname") or d_host,
        port=port or d_port or int(first("port") or 22),
        user=user or d_user or first("user") or _local_user(),
        identity_files=many("identityfile"),
        identities_only=first("identitiesonly").lower() == "yes",
        known_hosts=known or (() if "userknownhostsfile" in cfg else
                              tuple(os.path.expanduser(p) for p in DEFAULT_KNOWN_HOSTS)),
        host_key_alias=first("hostkeyalias"),
        proxy_jump="" if proxy_jump.lower() == "none" else proxy_jump,
        proxy_command="" if first("proxycommand").lower() == "none" else first("proxycommand"),
        connect_timeout=timeout,
        alive_interval=interval,
        alive_count=count,
        config_file=config_file,
    )


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Strict host-key checking against known_hosts files; never adds a key.

    Usable as ``SSHClient.set_missing_host_key_policy`` (refuses unknown
    hosts) and, through :meth:`verify`, on a bare transport, where it also
    refuses a changed key.
    """

    def __init__(self, files: Iterable[str], target: str | None = None) -> None:
        self.files = tuple(files)
        self.target = target
        self.keys = paramiko.HostKeys()
        for name in self.files:
            if os.path.isfile(name):
                # A malformed line makes paramiko raise; the user must see which file.
                try:
                    self.keys.load(name)
                except (OSError, paramiko.SSHException, ValueError) as err:
                    raise HostKeyError(f"cannot read known_hosts file {name}: {err}",
                                       target=target) from err

    def known_types(self, name: str) -> list[str]:
        """Key types on file for ``name`` (to prefer them in key exchange)."""
        entry = self.keys.lookup(name)
        return list(entry.keys()) if entry else []

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        """Called by ``SSHClient`` for a host with no key on file: refuse it."""
        raise self._unknown(hostname, key, 22)

    def _unknown(self, name: str, key: paramiko.PKey, port: int) -> HostKeyError:
        files = self.files or DEFAULT_KNOWN_HOSTS
        host = name.strip("[").split("]")[0]
        keytype = key.get_name().removeprefix("ssh-").removeprefix("ecdsa-sha2-")
        scan = f"ssh-keyscan -t {keytype}" + (f" -p {port}" if port != 22 else "")
        return HostKeyError(
            f"host key of {name} is unknown ({key.get_name()} {fingerprint(key)}); "
            f"refusing to connect",
            target=self.target,
            hint=f"if that fingerprint is the board's, trust it with: "
                 f"{scan} {host} >> {files[0]}",
        )

    def verify(self, name: str, key: paramiko.PKey, port: int = 22) -> None:
        """Accept ``key`` for ``name`` or raise :class:`HostKeyError` (unknown or changed)."""
        entry = self.keys.lookup(name)
        if not entry:
            raise self._unknown(name, key, port)
        known = entry.get(key.get_name())
        if known is not None and known.asbytes() == key.asbytes():
            return
        old = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in entry.values())
        raise HostKeyError(
            f"HOST KEY OF {name} HAS CHANGED: the board presented {key.get_name()} "
            f"{fingerprint(key)}, known_hosts holds {old}; someone may be intercepting the "
            f"connection, or the board was reflashed",
            target=self.target,
            hint=f"if the board was reinstalled, remove the old key with: "
                 f"ssh-keygen -R '{name}' -f {self.files[0] if self.files else '~/.ssh/known_hosts'}"
                 f" and trust the new one after checking its fingerprint",
        )


@dataclass
class _Probe:
    """State of the liveness monitor."""

    failures: int = 0
    last_ok: float = field(default_factory=time.monotonic)


class SshConnection(Connection):
    """One authenticated SSH transport to a board; commands run on channels of it."""

    channel_errors = (paramiko.SSHException, OSError, EOFError)

    def __init__(self, endpoint: SshEndpoint, target: str | None = None) -> None:
        self.endpoint = endpoint
        self.target = target
        self.transport: paramiko.Transport | None = None
        self._jump: SshConnection | None = None
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None
        #: Why the monitor closed the transport ("" while it has not).
        self.lost_reason = ""
        self.connected_at = 0.0

    # -- connecting ------------------------------------------------------------------
    def _socket(self) -> Any:
        ep = self.endpoint
        if ep.proxy_jump:
            hops = [h.strip() for h in ep.proxy_jump.split(",") if h.strip()]
            # ProxyJump a,b: reach b through a, then the target through b.
            jump: SshConnection | None = None
            for hop in hops:
                user, host, port = _split_destination(hop)
                hop_ep = resolve_endpoint(host, config_file=ep.config_file, user=user, port=port,
                                          connect_timeout=ep.connect_timeout)
                conn = SshConnection(hop_ep, self.target)
                conn._jump = jump
                conn.open()
                jump = conn
            assert jump is not None and jump.transport is not None
            self._jump = jump
            try:
                return jump.transport.open_channel(
                    "direct-tcpip", (ep.hostname, ep.port), ("127.0.0.1", 0),
                    timeout=ep.connect_timeout)
            except (paramiko.SSHException, OSError) as err:
                raise UnreachableError(
                    f"jump host {jump.endpoint.alias} cannot reach {ep.hostname}:{ep.port}: {err}",
                    target=self.target) from err
        if ep.proxy_command:
            return paramiko.ProxyCommand(ep.proxy_command)
        if self._jump is not None and self._jump.transport is not None:
            return self._jump.transport.open_channel(
                "direct-tcpip", (ep.hostname, ep.port), ("127.0.0.1", 0),
                timeout=ep.connect_timeout)
        try:
            sock = socket.create_connection((ep.hostname, ep.port), timeout=ep.connect_timeout)
        except TimeoutError as err:
            raise UnreachableError(
                f"connecting to {ep.display} timed out after {ep.connect_timeout:.0f} s",
                target=self.target, hint=f"is the board on? try: {ep.ssh_command()}") from err
        except OSError as err:
            raise UnreachableError(
                f"cannot connect to {ep.display}: {err.strerror or err}",
                target=self.target, hint=f"is the board on? try: {ep.ssh_command()}") from err
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def open(self) -> SshConnection:
        """Connect, verify the host key, authenticate, start the liveness probe.

        A connection that sshd drops before its banner (MaxStartups throttling
        while many clients connect, an sshd restarting) is retried within the
        connect timeout; every other failure is final.
        """
        deadline = time.monotonic() + self.endpoint.connect_timeout
        while True:
            try:
                return self._open()
            except UnreachableError as err:
                if "banner" not in str(err) or time.monotonic() + 0.5 > deadline:
                    raise
                time.sleep(0.2)  # back-off before the next attempt

    def _open(self) -> SshConnection:
        if self.transport is not None and self.transport.is_active():
            return self
        ep = self.endpoint
        policy = KnownHostsPolicy(ep.known_hosts, self.target)
        sock = self._socket()
        transport = paramiko.Transport(sock)
        transport.banner_timeout = ep.connect_timeout
        transport.handshake_timeout = ep.connect_timeout
        # Offer the key types on file first, as OpenSSH does, so a known host is not
        # "unknown" merely because it also has a key of a type we prefer.
        known = policy.known_types(ep.key_name)
        options = transport.get_security_options()
        options.key_types = tuple([t for t in known if t in options.key_types]
                                  + [t for t in options.key_types if t not in known])
        try:
            transport.start_client(timeout=ep.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as err:
            transport.close()
            raise UnreachableError(f"SSH handshake with {ep.display} failed: {err}",
                                   target=self.target,
                                   hint=f"try: {ep.ssh_command()}") from err
        try:
            policy.verify(ep.key_name, transport.get_remote_server_key(), ep.port)
            self._authenticate(transport)
        except BaseException:
            transport.close()
            raise
        transport.set_keepalive(max(1, int(ep.alive_interval)))
        self.transport = transport
        self.lost_reason = ""
        self.connected_at = time.time()
        self._closing.clear()
        self._monitor = threading.Thread(target=self._watch, name=f"ssh-alive-{ep.alias}",
                                         daemon=True)
        self._monitor.start()
        return self

    def _keys(self) -> list[tuple[str, paramiko.PKey]]:
        ep = self.endpoint
        found: list[tuple[str, paramiko.PKey]] = []
        if not ep.identities_only:
            with contextlib.suppress(paramiko.SSHException, OSError):
                found += [(f"agent key {fingerprint(k)}", k) for k in paramiko.Agent().get_keys()]
        files = ep.identity_files or tuple(os.path.expanduser(p) for p in DEFAULT_IDENTITIES)
        for name in files:
            if not os.path.isfile(name):
                continue
            try:
                found.append((name, paramiko.PKey.from_path(name)))
            except (paramiko.SSHException, OSError, ValueError):
                continue  # passphrase-protected or unreadable: the agent may hold it
        return found

    def _authenticate(self, transport: paramiko.Transport) -> None:
        ep = self.endpoint
        tried: list[str] = []
        for label, key in self._keys():
            try:
                transport.auth_publickey(ep.user, key)
            except paramiko.AuthenticationException:
                tried.append(label)
                continue
            except (paramiko.SSHException, OSError, EOFError) as err:
                raise UnreachableError(f"connection to {ep.display} dropped during "
                                       f"authentication: {err}", target=self.target) from err
            if transport.is_authenticated():
                return
        raise AuthRefusedError(
            f"{ep.display} refused public-key authentication for user '{ep.user}' "
            f"(tried: {', '.join(tried) or 'no usable key'})",
            target=self.target,
            hint=f"check IdentityFile/User for '{ep.alias}' in "
                 f"{ep.config_file or '~/.ssh/config'} and the board's authorized_keys",
        )

    def _watch(self) -> None:
        """Close the transport when ``alive_count`` probes in a row get no reply."""
        ep = self.endpoint
        state = _Probe()
        transport = self.transport
        while not self._closing.wait(ep.alive_interval):
            if transport is None or not transport.is_active():
                return
            done = threading.Event()

            def probe(t: paramiko.Transport = transport, ev: threading.Event = done) -> None:
                with contextlib.suppress(Exception):
                    t.global_request("keepalive@openssh.com", wait=True)
                ev.set()

            threading.Thread(target=probe, daemon=True).start()
            deadline = ep.alive_interval * ep.alive_count
            if done.wait(deadline) and transport.is_active():
                state.failures, state.last_ok = 0, time.monotonic()
                continue
            if self._closing.is_set():
                return
            self.lost_reason = (f"no answer from {ep.display} for "
                                f"{time.monotonic() - state.last_ok:.0f} s")
            with contextlib.suppress(Exception):
                transport.close()
            return

    # -- state -----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether the transport is up (the probe closes it when the board stops answering)."""
        return self.transport is not None and self.transport.is_active()

    def _require(self) -> paramiko.Transport:
        if self.transport is None:
            self.open()
        assert self.transport is not None
        if not self.transport.is_active():
            raise ConnectionLostError(self.lost_reason or f"connection to {self.endpoint.display} "
                                      "lost", target=self.target)
        return self.transport

    def close(self) -> None:
        """Close the transport (and jump hosts); idempotent."""
        self._closing.set()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def kill_socket(self) -> None:
        """Drop the TCP connection abruptly, as a crashed client would (used by tests)."""
        if self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sock.shutdown(socket.SHUT_RDWR)
        self.close()

    # -- commands --------------------------------------------------------------------
    @property
    def host_key(self) -> str:
        """The board's host key as ``type SHA256:...``."""
        key = self.transport.get_remote_server_key() if self.transport is not None else None
        return f"{key.get_name()} {fingerprint(key)}" if key is not None else "?"

    def open_channel(self, *, timeout: float | None = None) -> paramiko.Channel:
        """A new session channel, with no command yet (one round trip)."""
        transport = self._require()
        try:
            return transport.open_session(timeout=timeout or self.endpoint.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise ConnectionLostError(
                self.lost_reason or f"cannot open a channel to {self.endpoint.display}: {err}",
                target=self.target) from err

    def start(self, chan: paramiko.Channel, command: str) -> paramiko.Channel:
        """Send ``exec command`` on an open channel without waiting for the server's reply.

        With want-reply false the command costs no round trip of its own; a
        command the server refuses closes the channel, which readers see as EOF
        without an exit status.
        """
        transport = self._require()
        try:
            msg = paramiko.Message()
            msg.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
            msg.add_int(chan.remote_chanid)
            msg.add_string("exec")
            msg.add_boolean(False)
            msg.add_string(command)
            transport._send_user_message(msg)  # type: ignore[attr-defined]
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise ConnectionLostError(
                self.lost_reason or f"cannot start a command on {self.endpoint.display}: {err}",
                target=self.target) from err
        return chan

    def exec(self, command: str, *, timeout: float | None = None) -> Channel:
        """Start ``command`` on a new channel (one round trip: the channel's opening)."""
        return self.start(self.open_channel(timeout=timeout), command)
