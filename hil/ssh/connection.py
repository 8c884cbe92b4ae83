"""One SSH connection to a board, on Fabric: ssh_config, strict host keys, streaming channels.

:class:`SshConnection` is a :class:`fabric.Connection`.  Fabric resolves the
target's ssh_config (``~/.ssh/config``, or the target's ``ssh.config`` as
``ssh -F`` reads it: HostName, User, Port, IdentityFile, ConnectTimeout,
ProxyJump as its ``gateway``, ProxyCommand) and runs plain commands
(:meth:`~SshConnection.run` returns :class:`hil.result.Result`, the one
command-result type; ``warn=False`` raises ``UnexpectedExit``).  What is ours is only what Fabric lacks:

* strict host keys: Fabric adds unknown keys (``AutoAddPolicy``); here the
  known_hosts files that ssh_config names (UserKnownHostsFile,
  GlobalKnownHostsFile, HostKeyAlias; on every ProxyJump hop) are loaded and
  :class:`KnownHostsPolicy` refuses an unknown host with its fingerprint and
  the command that trusts it; a changed key is refused loudly;
* connection faults as exit codes (:mod:`hil.errors`): unreachable 10, auth
  refused 11, host key 12; a command's timeout or a lost link as HilErrors;
* a liveness probe (``keepalive@openssh.com`` with a reply, as OpenSSH's
  ServerAlive*) that closes the transport when the board stops answering, so
  a cut link surfaces in seconds instead of TCP's minutes;
* channels that stream on the same transport (:meth:`~SshConnection.exec`,
  :meth:`~SshConnection.stream`): the container's output, the lease,
  telemetry and rsync's tunnel (:mod:`hil.ssh.sync`).  Commands are started with
  exec want-reply off, Fabric's ``run`` included: a round trip less each.

:func:`connect_in_background` starts a session's handshake at configure time,
:func:`connect` takes it up; :func:`open_boards` opens several boards at once
as one :class:`fabric.ThreadingGroup`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import re
import select
import shlex
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fabric
import fabric.runners
import paramiko
from fabric.connection import derive_shorthand
from invoke.exceptions import CommandTimedOut, ThreadException

from hil.errors import (
    AuthRefusedError,
    CommandTimedOutError,
    ConfigError,
    ConnectionLostError,
    HilError,
    HostKeyError,
    UnreachableError,
)
from hil.result import Result

if TYPE_CHECKING:
    from hil.config import TargetSpec

#: known_hosts files OpenSSH reads when ssh_config names none.
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
DEFAULT_ALIVE_INTERVAL = 5.0
DEFAULT_ALIVE_COUNT = 3

ByteSink = Callable[[bytes], object]  # a return value (e.g. "done") is ignored here


@dataclass(frozen=True)
class SshEndpoint:
    """Where and how to connect, after ssh_config resolution."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts: tuple[str, ...] = ()
    global_known_hosts: tuple[str, ...] = ()
    host_key_alias: str = ""
    proxy_jump: str = ""
    proxy_command: str = ""
    connect_timeout: float = 10.0
    alive_interval: float = DEFAULT_ALIVE_INTERVAL
    alive_count: int = DEFAULT_ALIVE_COUNT
    config_file: str = ""

    @property
    def key_name(self) -> str:
        """The name its host key is filed under in known_hosts (OpenSSH's rule)."""
        return _key_name(self.host_key_alias or self.hostname, self.port)

    @property
    def display(self) -> str:
        """``user@alias (hostname:port)`` for messages."""
        who = f"{self.user}@" if self.user else ""
        real = "" if self.hostname == self.alias else f" ({self.hostname}:{self.port})"
        return f"{who}{self.alias}{real}"

    def ssh_command(self) -> str:
        """The OpenSSH command a user would type to reach the same host."""
        return shlex.join(["ssh", *(["-F", self.config_file] if self.config_file else []),
                           self.alias])


def _key_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def fabric_config(config_file: str = "") -> fabric.Config:
    """Fabric's configuration reading ``config_file`` (as ``ssh -F``) or the usual ssh_config files.

    Commands run hidden, without raising on a non-zero exit, with standard
    input closed (as ``ssh host cmd </dev/null``), on :class:`_Remote`.
    """
    path = os.path.expanduser(config_file) if config_file else None
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"ssh config file {config_file} does not exist")
    try:
        config = fabric.Config(runtime_ssh_path=path)
    except (OSError, paramiko.ConfigParseError) as err:
        raise ConfigError(f"cannot read ssh config {config_file or '~/.ssh/config'}: {err}"
                          ) from err
    config.run.hide = True
    config.run.warn = True
    config.run.in_stream = False
    config.runners.remote = _Remote
    return config


def _values(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """The (``~``-expanded) words of an ssh_config option, ``none`` and ``/dev/null`` dropped."""
    value: Any = cfg.get(key, [])
    items: list[str] = value if isinstance(value, list) else str(value).split()
    return tuple(os.path.expanduser(v) for v in items
                 if v and v.lower() != "none" and v != "/dev/null")


def _known_hosts(cfg: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The known_hosts files ssh_config names under ``key`` for a host, or OpenSSH's."""
    return _values(cfg, key) if key in cfg else tuple(os.path.expanduser(p) for p in default)


def _all_known_hosts(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The user's known_hosts files, then the global ones."""
    return (_known_hosts(cfg, "userknownhostsfile", DEFAULT_KNOWN_HOSTS)
            + _known_hosts(cfg, "globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS))


def _number(cfg: Mapping[str, Any], key: str, default: float) -> float:
    text = str(cfg.get(key, ""))
    return float(text) if text.isdigit() and int(text) > 0 else default


def resolve_endpoint(host: str, *, config_file: str = "", user: str = "", port: int = 0,
                     connect_timeout: float = 10.0) -> SshEndpoint:
    """Resolve ``host`` (an alias, ``host``, ``user@host:port``) through ssh_config.

    Explicit ``user``/``port`` (from the target's TOML) win over the config,
    as ``ssh -l``/``-p`` do; ConnectTimeout in the config wins over the default.
    """
    short = derive_shorthand(host.removeprefix("ssh://"))
    config = fabric_config(config_file)
    cfg = config.base_ssh_config.lookup(short["host"])

    def first(key: str) -> str:
        value = cfg.get(key, "")
        text = str(value[0] if isinstance(value, list) else value)
        return "" if text.lower() == "none" else text

    return SshEndpoint(
        alias=short["host"],
        hostname=first("hostname") or short["host"],
        port=port or short["port"] or int(first("port") or 22),
        user=user or short["user"] or first("user") or str(config.user),
        identity_files=_values(cfg, "identityfile"),
        identities_only=first("identitiesonly").lower() == "yes",
        known_hosts=_known_hosts(cfg, "userknownhostsfile", DEFAULT_KNOWN_HOSTS),
        global_known_hosts=_known_hosts(cfg, "globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS),
        host_key_alias=first("hostkeyalias"),
        proxy_jump=first("proxyjump"),
        proxy_command=first("proxycommand"),
        connect_timeout=_number(cfg, "connecttimeout", connect_timeout),
        alive_interval=_number(cfg, "serveraliveinterval", DEFAULT_ALIVE_INTERVAL),
        alive_count=int(_number(cfg, "serveralivecountmax", DEFAULT_ALIVE_COUNT)),
        config_file=config_file,
    )


def declared_hosts(config_file: str) -> list[str]:
    """The ``Host`` aliases (patterns left out) of an ssh_config file; [] when unreadable."""
    try:
        config = paramiko.SSHConfig.from_path(os.path.expanduser(config_file))
    except OSError:
        return []
    return sorted(h for h in config.get_hostnames() if not any(c in h for c in "*?!"))


def _missing_alias_hint(alias: str, config: str) -> str:
    pool = re.fullmatch(r"hil-sim-jetson-(\d+)", alias)
    if pool:  # a pool board the simulated rig was brought up without
        return f"the simulated rig has fewer boards: `hil sim up --boards {pool[1]}`"
    return (f"add a `Host {alias}` block (HostName, User, IdentityFile) to {config}, "
            f"or name a Host it has: {', '.join(declared_hosts(config)) or '(none)'}")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Strict host-key checking against known_hosts files; never adds a key.

    The files are loaded into ``keys`` (an ``SSHClient``'s own, see
    :meth:`install`): paramiko then refuses a changed key
    (``BadHostKeyException``, turned into :meth:`changed`) and asks this
    policy about a host with no key on file, which it refuses.
    """

    def __init__(self, files: Iterable[str], target: str | None = None,
                 keys: paramiko.HostKeys | None = None) -> None:
        self.files = tuple(files)
        self.target = target
        self.keys = keys if keys is not None else paramiko.HostKeys()
        #: Keys of ``@revoked`` lines: refused whatever other lines say.
        self.revoked: list[paramiko.PKey] = []
        texts = {name: self._read(name) for name in self.files if os.path.isfile(name)}
        for name, lines in texts.items():
            for line in lines:
                marker, _, rest = line.strip().partition(" ")
                key = self._key(name, rest) if marker == "@revoked" else None
                if key is not None:
                    self.revoked.append(key)
        for name, lines in texts.items():
            self._load(name, lines)

    def _read(self, name: str) -> list[str]:
        try:
            with open(name, encoding="utf-8", errors="replace") as file:
                return file.read().splitlines()
        except OSError as err:
            raise HostKeyError(f"cannot read known_hosts file {name}: {err}",
                               target=self.target) from err

    def _key(self, name: str, line: str) -> paramiko.PKey | None:
        """The key of a known_hosts line; None for a key type paramiko does not know."""
        # A malformed line makes paramiko raise; the user must see which file.
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip())
        except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError) as err:
            raise HostKeyError(f"cannot read known_hosts file {name}: {err}",
                               target=self.target) from err
        return None if entry is None else entry.key

    def _load(self, name: str, lines: list[str]) -> None:
        """Load the plain lines of ``name``: ``@cert-authority`` lines are left out (paramiko
        cannot check host certificates: they grant nothing here), and so are revoked keys."""
        plain = [line for line in lines
                 if line.strip() and not line.lstrip().startswith(("#", "@"))
                 and not any(self._key(name, line) == bad for bad in self.revoked)]
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".known_hosts") as tmp:
            tmp.write("".join(f"{line}\n" for line in plain))
            tmp.flush()
            try:
                self.keys.load(tmp.name)
            except (OSError, paramiko.SSHException, ValueError) as err:
                raise HostKeyError(f"cannot read known_hosts file {name}: {err}",
                                   target=self.target) from err

    @classmethod
    def install(cls, conn: fabric.Connection, target: str | None = None) -> KnownHostsPolicy:
        """Make ``conn`` and each of its ProxyJump hops check host keys strictly; ``conn``'s policy."""
        hop: Any = conn
        first: KnownHostsPolicy | None = None
        while isinstance(hop, fabric.Connection):
            cfg = hop.ssh_config
            policy = cls(_all_known_hosts(cfg), target, hop.client.get_host_keys())
            first = first or policy
            alias = cfg.get("hostkeyalias", "")
            entry: Any = policy.keys.lookup(str(alias)) if alias else None
            for keytype, key in (entry or {}).items():  # filed under the alias: also the real name
                policy.keys.add(_key_name(hop.host, hop.port), keytype, key)
            hop.client.set_missing_host_key_policy(policy)
            hop = hop.gateway
        assert first is not None
        return first

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        """Called by ``SSHClient`` for a host with no key on file: refuse it."""
        raise self.unknown(hostname, key)

    def unknown(self, name: str, key: paramiko.PKey) -> HostKeyError:
        """The error for a host with no key on file."""
        files = self.files or DEFAULT_KNOWN_HOSTS
        if any(key == bad for bad in self.revoked):
            return HostKeyError(
                f"host key of {name} ({key.get_name()} {fingerprint(key)}) is REVOKED in "
                f"known_hosts; refusing to connect", target=self.target,
                hint="someone may be intercepting the connection; ask the board's admin")
        on_file = sorted(self.keys.lookup(name) or {})
        if on_file:
            return HostKeyError(
                f"host key of {name} is not on file as {key.get_name()} {fingerprint(key)}: "
                f"known_hosts holds only {', '.join(on_file)} for it, which the board did not "
                f"offer; refusing to connect", target=self.target,
                hint="if the board was reinstalled, check the new key's fingerprint with its "
                     "admin before trusting it; else someone may be intercepting the connection")
        host, _, port = name.removeprefix("[").partition("]:")
        scan = f"ssh-keyscan -t {_keyscan_type(key)}" + (f" -p {port}" if port else "")
        return HostKeyError(
            f"host key of {name} is unknown ({key.get_name()} {fingerprint(key)}); "
            f"refusing to connect",
            target=self.target,
            hint=f"if that fingerprint is the board's, trust it with: "
                 f"{scan} {host} >> {files[0]}",
        )

    def changed(self, name: str, key: paramiko.PKey, expected: paramiko.PKey) -> HostKeyError:
        """The error for a host whose key differs from the one on file."""
        old = f"{expected.get_name()} {fingerprint(expected)}"
        return HostKeyError(
            f"HOST KEY OF {name} HAS CHANGED: the board presented {key.get_name()} "
            f"{fingerprint(key)}, known_hosts holds {old}; someone may be intercepting the "
            f"connection, or the board was reflashed",
            target=self.target,
            hint=f"if the board was reinstalled, remove the old key with: "
                 f"ssh-keygen -R '{name}' -f {self.files[0] if self.files else '~/.ssh/known_hosts'}"
                 f" and trust the new one after checking its fingerprint",
        )


def _keyscan_type(key: paramiko.PKey) -> str:
    """``ssh-keyscan -t`` of ``key``: ``ed25519``, ``rsa``, ``ecdsa``, ``ed25519-sk``, ..."""
    name = key.get_name()
    sk = "-sk" if name.startswith("sk-") else ""
    for family in ("ed25519", "ecdsa", "rsa", "dss"):
        if family in name:
            return ("dsa" if family == "dss" else family) + sk
    return name


def start_command(chan: paramiko.Channel, command: str) -> None:
    """Send ``exec command`` on an open channel without waiting for the server's reply.

    With want-reply false the command costs no round trip of its own; a
    command the server refuses closes the channel, which readers see as EOF
    without an exit status.
    """
    msg = paramiko.Message()
    msg.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    msg.add_int(chan.remote_chanid)
    msg.add_string("exec")
    msg.add_boolean(False)
    msg.add_string(command)
    transport: Any = chan.transport
    transport._send_user_message(msg)


def exited(chan: paramiko.Channel) -> bool:
    """Whether the server sent the channel's exit status.

    paramiko's ``exit_status_ready()`` is also true for a channel closed under
    a dying transport, with the placeholder status -1; that is not an exit.
    """
    return bool(chan.exit_status_ready()) and chan.exit_status != -1


class _Remote(fabric.runners.Remote):  # type: ignore[misc]
    """Fabric's runner for ``run``, starting the command as :func:`start_command` does."""

    def send_start_message(self, command: str) -> None:
        start_command(self.channel, command)
        if self.streams["in"] is False:
            self.channel.shutdown_write()  # nothing will be sent: the command sees EOF


class SshConnection(fabric.Connection):  # type: ignore[misc]
    """A :class:`fabric.Connection` to a board with strict host keys and a liveness probe.

    One serves a whole session: commands run on channels of the same
    transport, concurrently when they are independent.  Two are equal only
    when they are the same object (a session may hold several to one board).
    """

    # Class-level defaults: invoke's Context turns a set of an attribute it
    # does not have into a configuration key.
    endpoint: SshEndpoint = SshEndpoint("", "")
    target: str | None = None
    #: Why the connection was found dead ("" while it is alive).
    lost_reason: str = ""
    #: When the SSH transport was opened (epoch seconds).
    connected_at: float = 0.0
    _closing: threading.Event | None = None
    _policy: KnownHostsPolicy | None = None
    __hash__ = object.__hash__

    def __init__(self, endpoint: SshEndpoint, target: str | None = None) -> None:
        kwargs: dict[str, Any] = {"banner_timeout": endpoint.connect_timeout,
                                  "auth_timeout": endpoint.connect_timeout}
        if endpoint.identities_only:
            kwargs.update(allow_agent=False, look_for_keys=False)
        # Agent forwarding is off whatever ssh_config says: a board user (or a container
        # reaching the session's socket) could sign with the user's keys.
        super().__init__(endpoint.alias, user=endpoint.user, port=endpoint.port,
                         config=fabric_config(endpoint.config_file),
                         connect_timeout=max(1, round(endpoint.connect_timeout)),
                         connect_kwargs=kwargs, forward_agent=False)
        self.endpoint = endpoint
        self.target = target
        self._closing = threading.Event()
        self._policy = KnownHostsPolicy.install(self, target)

    def __eq__(self, other: object) -> bool:
        return self is other

    # -- connecting ------------------------------------------------------------------
    def open(self) -> SshConnection:
        """Connect, verify the host key, authenticate, start the liveness probe.

        A connection that sshd drops before its banner (MaxStartups throttling
        while many clients connect, an sshd restarting) is retried within the
        connect timeout; every other failure is final.
        """
        if self.is_connected:
            return self
        deadline = time.monotonic() + self.endpoint.connect_timeout
        while True:
            try:
                self._open()
                break
            except UnreachableError as err:
                if "banner" not in str(err) or time.monotonic() + 0.5 > deadline:
                    raise
                time.sleep(0.2)  # back-off before the next attempt
        ep = self.endpoint
        self.transport.set_keepalive(max(1, int(ep.alive_interval)))
        self.lost_reason = ""
        self.connected_at = time.time()
        assert self._closing is not None
        self._closing.clear()
        threading.Thread(target=self._watch, args=(self.transport,),
                         name=f"ssh-alive-{ep.alias}", daemon=True).start()
        return self

    def _open(self) -> None:
        ep = self.endpoint
        if not self.gateway:
            self.connect_kwargs["sock"] = self._socket()
        try:
            super().open()
        except HilError:
            self.client.close()
            raise
        except paramiko.BadHostKeyException as err:
            self.client.close()
            ours = err.hostname == self.host  # else a ProxyJump hop's
            policy = self._policy if ours and self._policy else KnownHostsPolicy((), self.target)
            name = _key_name(err.hostname, self.port) if ours else err.hostname
            raise policy.changed(name, err.key, err.expected_key) from None
        except (paramiko.SSHException, OSError, EOFError) as err:
            self.client.close()
            if isinstance(err, paramiko.AuthenticationException) or (
                    isinstance(err, paramiko.SSHException)
                    and "authentication" in str(err).lower()):  # "no ... methods available"
                raise self._auth_refused(err) from None
            via = f" through {self.gateway.original_host}" if isinstance(
                self.gateway, fabric.Connection) else ""
            raise UnreachableError(f"SSH connection to {ep.display}{via} failed: "
                                   f"{getattr(err, 'strerror', None) or err}",
                                   target=self.target, hint=f"try: {ep.ssh_command()}") from err
        finally:
            self.connect_kwargs.pop("sock", None)

    def _auth_refused(self, err: Exception) -> AuthRefusedError:
        ep = self.endpoint
        tried = [*(self.connect_kwargs.get("key_filename") or ()),
                 *(["agent keys"] if self.connect_kwargs.get("allow_agent", True) else [])]
        return AuthRefusedError(
            f"{ep.display} refused public-key authentication for user '{ep.user}' "
            f"(tried: {', '.join(tried) or 'no usable key'}): {err}",
            target=self.target,
            hint=f"check IdentityFile/User for '{ep.alias}' in "
                 f"{ep.config_file or '~/.ssh/config'} and the board's authorized_keys",
        )

    def _socket(self) -> socket.socket:
        """The TCP connection, with Nagle off (SSH sends small packets that wait on no ACK)."""
        ep = self.endpoint
        hint = f"is the board on? try: {ep.ssh_command()}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=ep.connect_timeout)
        except TimeoutError as err:
            raise UnreachableError(
                f"connecting to {ep.display} timed out after {ep.connect_timeout:.0f} s",
                target=self.target, hint=hint) from err
        except socket.gaierror as err:
            config = ep.config_file or "~/.ssh/config"
            if ep.hostname == ep.alias and ep.alias not in declared_hosts(config):
                raise UnreachableError(
                    f"no Host '{ep.alias}' in {config}, and no machine of that name "
                    f"({err.strerror or err})", target=self.target,
                    hint=_missing_alias_hint(ep.alias, config)) from err
            raise UnreachableError(f"cannot connect to {ep.display}: {err.strerror or err}",
                                   target=self.target, hint=hint) from err
        except OSError as err:
            raise UnreachableError(f"cannot connect to {ep.display}: {err.strerror or err}",
                                   target=self.target, hint=hint) from err
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _watch(self, transport: paramiko.Transport) -> None:
        """Close the transport when ``alive_count`` probes in a row get no reply."""
        ep = self.endpoint
        last_ok = time.monotonic()
        assert self._closing is not None
        while not self._closing.wait(ep.alive_interval):
            if not transport.is_active():
                return
            done = threading.Event()

            def probe(ev: threading.Event = done) -> None:
                with contextlib.suppress(Exception):
                    transport.global_request("keepalive@openssh.com", wait=True)
                ev.set()

            threading.Thread(target=probe, daemon=True).start()
            if done.wait(ep.alive_interval * ep.alive_count) and transport.is_active():
                last_ok = time.monotonic()
                continue
            if self._closing.is_set():
                return
            self.lost_reason = f"no answer from {ep.display} for {time.monotonic() - last_ok:.0f} s"
            with contextlib.suppress(Exception):
                transport.close()
            return

    # -- state -----------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether the transport is up (the probe closes it when the board stops answering)."""
        return bool(self.is_connected)

    @property
    def host_key(self) -> str:
        """The board's host key as ``type SHA256:...``."""
        key = self.transport.get_remote_server_key() if self.transport is not None else None
        return f"{key.get_name()} {fingerprint(key)}" if key is not None else "?"

    def close(self) -> None:
        """Close the transport and those of the ProxyJump hops (idempotent)."""
        if self._closing is not None:
            self._closing.set()
        super().close()
        self.client.close()  # also when the transport died (Fabric then skips it)
        hop = self.gateway
        while isinstance(hop, fabric.Connection):
            hop.close()
            hop = hop.gateway

    def kill_socket(self) -> None:
        """Drop the TCP connection abruptly, as a crashed client would (used by tests)."""
        if self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sock.shutdown(socket.SHUT_RDWR)
        self.close()

    def _lost(self, what: str) -> ConnectionLostError:
        return ConnectionLostError(self.lost_reason or what, target=self.target)

    # -- commands --------------------------------------------------------------------
    def run(self, command: str, **kwargs: Any) -> Result:
        """Fabric's ``run`` (hidden, ``warn``, stdin closed); a timeout or lost link raise.

        Returns the one command-result type of pytest-hil (:class:`hil.result.Result`),
        as a command run on this host does.

        ``timeout`` (seconds) raises :class:`CommandTimedOutError` naming the command;
        a connection that dies under it, :class:`ConnectionLostError`.
        """
        try:
            result = super().run(command, **kwargs)
        except CommandTimedOut as err:
            raise CommandTimedOutError(f"remote command timed out after {err.timeout:.0f} s",
                                       target=self.target, command=command) from None
        except (paramiko.SSHException, OSError, EOFError, ThreadException) as err:
            raise self._lost(f"connection to {self.endpoint.display} lost: {err}") from err
        if result.exited == -1 and not self.alive:
            raise self._lost(f"connection to {self.endpoint.display} lost")
        return Result(command, int(result.exited), result.stdout, result.stderr)

    def exec(self, command: str, *, timeout: float | None = None) -> paramiko.Channel:
        """Start ``command`` on a new channel of the transport; read its output from the channel.

        One round trip (the channel's opening); the connection opens first if
        it is not open yet.
        """
        if self.transport is None:
            self.open()
        if not self.alive:
            raise self._lost(f"connection to {self.endpoint.display} lost")
        try:
            chan: paramiko.Channel = self.transport.open_session(
                timeout=timeout or self.endpoint.connect_timeout)
            start_command(chan, command)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise self._lost(f"cannot start a command on {self.endpoint.display}: {err}") from err
        return chan

    def stream(self, chan: paramiko.Channel, on_stdout: ByteSink, on_stderr: ByteSink, *,
               deadline: float | None = None, tick: Callable[[], None] | None = None) -> int:
        """Pump a channel's output to the sinks as it arrives until it exits; its exit status.

        Raises :class:`ConnectionLostError` when the transport dies first and
        :class:`TimeoutError` at ``deadline`` (``time.monotonic()`` based).
        A command killed by a signal returns -1.
        """
        fd = chan.fileno()
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            with contextlib.suppress(OSError, ValueError):
                select.select([fd], [], [], wait)
            got = _drain(chan, on_stdout, on_stderr)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            if got:
                continue
            # Read "closed" before the exit status: a status always arrives before the
            # close, so a channel seen closed here has its status, if it got one.
            closed = chan.closed
            if exited(chan) and (chan.eof_received or closed):
                while _drain(chan, on_stdout, on_stderr):  # what raced with the exit status
                    pass
                return int(chan.recv_exit_status())
            if not self.alive:
                if exited(chan):
                    return int(chan.recv_exit_status())
                raise self._lost(f"connection to {self.endpoint.display} lost")
            if closed:
                # Closed on a live connection without an exit status: the command
                # was killed by a signal (sshd sends exit-signal, which paramiko drops).
                return -1
            if tick is not None:
                tick()


#: Chunks read from one of a channel's streams before the caller looks at its deadline
#: again: a command that writes without pause never drains its channel.
DRAIN_CHUNKS = 16


def _drain(chan: paramiko.Channel, on_stdout: ByteSink, on_stderr: ByteSink) -> bool:
    """Pass what ``chan`` holds on stdout and stderr to the sinks (a bounded amount); whether
    there was any."""
    got = False
    for ready, recv, sink in ((chan.recv_ready, chan.recv, on_stdout),
                              (chan.recv_stderr_ready, chan.recv_stderr, on_stderr)):
        for _ in range(DRAIN_CHUNKS):
            if not ready():
                break
            data = recv(1 << 16)
            if not data:
                break
            sink(data)
            got = True
    return got


# -- a session's connection, opened ahead ------------------------------------------------

_ahead: dict[tuple[Any, ...], Future[SshConnection]] = {}
_ahead_lock = threading.Lock()


def _key(spec: TargetSpec) -> tuple[Any, ...]:
    ssh = spec.ssh
    return (spec.name, ssh.host, ssh.config, ssh.user, ssh.port, spec.timeouts.connect)


def _open(spec: TargetSpec) -> SshConnection:
    ssh = spec.ssh
    ep = resolve_endpoint(ssh.host, config_file=ssh.config, user=ssh.user, port=ssh.port,
                          connect_timeout=spec.timeouts.connect)
    return SshConnection(ep, spec.name).open()


def connect_in_background(spec: TargetSpec) -> None:
    """Start opening ``spec``'s connection on a thread, for :func:`connect` to take up.

    Called at configure time, so that the handshake's round trips overlap the
    rest of the local start-up.  A failure is kept and raised by :func:`connect`;
    a connection nobody takes is closed at exit.
    """
    future: Future[SshConnection] = Future()
    with _ahead_lock:
        if _key(spec) in _ahead:
            return
        _ahead[_key(spec)] = future

    def opening() -> None:
        try:
            future.set_result(_open(spec))
        except BaseException as err:  # handed to connect(), in the caller's thread
            future.set_exception(err)

    threading.Thread(target=opening, name=f"ssh-connect-{spec.name}", daemon=True).start()


def connect(spec: TargetSpec) -> SshConnection:
    """``spec``'s connection: the one opened ahead (waiting for it) when alive, else a new one."""
    with _ahead_lock:
        future = _ahead.pop(_key(spec), None)
    if future is not None:
        conn = future.result()  # raises what the attempt raised (host key, auth, ...)
        if conn.alive:
            return conn
        conn.close()
    return _open(spec)


@atexit.register
def _close_ahead() -> None:
    with _ahead_lock:
        futures = list(_ahead.values())
        _ahead.clear()
    for future in futures:
        if future.done() and future.exception() is None:
            future.result().close()


# -- several boards ----------------------------------------------------------------------

def _open_board(name: str, endpoint: SshEndpoint) -> SshConnection:
    return SshConnection(endpoint, name).open()


def open_boards(boards: Mapping[str, SshEndpoint]
                ) -> tuple[fabric.ThreadingGroup, dict[str, HilError]]:
    """Open a connection to every board at once (board name -> endpoint).

    Returns a :class:`fabric.ThreadingGroup` of those that opened (its
    ``run`` goes to all of them in parallel and maps each connection to its
    ``Result``; the board's name is the connection's ``target``) and the error
    of each board that did not open, by name.
    """
    opened: list[SshConnection] = []
    failed: dict[str, HilError] = {}
    if boards:
        with ThreadPoolExecutor(max_workers=min(32, len(boards))) as pool:
            futures = {name: pool.submit(_open_board, name, ep) for name, ep in boards.items()}
        for name, future in futures.items():
            err = future.exception()
            if err is None:
                opened.append(future.result())
            elif isinstance(err, HilError):
                failed[name] = err
            else:
                failed[name] = UnreachableError(f"cannot connect: {err}", target=name)
    return fabric.ThreadingGroup.from_connections(opened), failed
