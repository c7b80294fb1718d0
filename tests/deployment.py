"""A real Flower deployment on loopback, for tests: one SuperLink, N SuperNodes and the `flwr` CLI.

Every component is a separate OS process, started the way an operator starts it, with its log in a file
under the deployment's folder::

    with Deployment(tmp_path, supernodes=3) as dep:        # superlink + 3 supernodes, insecure, free ports
        run = dep.run({"scenario": "simulations/deploy.toml", "out": str(tmp_path / "out")})
        assert run.status == "finished:completed", dep.logs()

What runs where (flwr 1.41 and 1.42 alike):

- ``flower-superlink --insecure --host 127.0.0.1 --port P`` serves the Fleet, Control and Runtime APIs on
  one HTTP port (FastAPI; SuperNodes no longer speak gRPC, and the ``--fleet-api-address``,
  ``--control-api-address``, ``--serverappio-api-address`` flags are deprecated or refused). It starts
  ``flower-superexec`` (in its own session, ``--parent-pid``), which starts one ``flwr-serverapp``
  process per run: :meth:`Deployment.serverapp_pids` finds it, :meth:`Deployment.kill_serverapp` SIGKILLs it.
- ``flower-supernode --insecure --superlink 127.0.0.1:P --port Q --node-config ...`` (Q: its own
  Runtime API, in place of ``--clientappio-api-address``) starts ``flower-superexec``, which starts one
  ``flwr-clientapp`` process per message.
- ``flwr run APP deploy`` reads the connection ``deploy`` from ``$FLWR_HOME/config.toml``; ``FLWR_HOME``
  is a folder of the deployment, so neither the user's ``~/.flwr`` nor the repo's pyproject is touched.
  ``flwr run`` exits 0 even when the ServerApp fails: :meth:`Deployment.run_status` asks ``flwr ls``.
- ``Deployment(..., tls=True)``: a throw-away CA and server certificate, the SuperLink with
  ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``, SuperNodes with ``--root-certificates``, and
  ``root-certificates`` instead of ``insecure = true`` in the connection. :func:`write_ping_app` writes
  a minimal app that checks the plumbing in seconds.

Each SuperNode has its own ``FLWR_HOME`` (where the FAB is unpacked) and a node config
``partition-id=i zkapex-state-dir='<dir>/supernode-i/state'`` (its unlearning state survives runs).
:meth:`Deployment.stop` (also on ``__exit__`` and at interpreter exit) kills every process tree it
started, even the ones Flower detached into their own sessions; the components also get SIGKILL if
the test process dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's flwr, flower-superlink, flower-supernode
CONNECTION = "deploy"  # the SuperLink connection's name in $FLWR_HOME/config.toml
FINISHED = "finished:"  # `flwr ls` statuses: pending, starting, running, finished:<sub-status>


def _die_with_parent() -> None:
    """Popen preexec_fn (Linux): SIGKILL the component if the test process dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as err:
        return f"({err})"
    return "\n".join(text[-lines:])


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A throw-away CA and a server certificate for ``hosts`` (SANs): ``ca.crt``, ``server.pem``, ``server.key``.

    What ``openssl`` would make for a real SuperLink (its certificate must name the address SuperNodes
    and ``flwr`` dial, and 127.0.0.1: the SuperLink's own SuperExec dials its Runtime API there).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zkapex test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def make_node_key(folder: Path) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format): ``node_key`` and ``node_key.pub``.

    Kept if it exists, so a restarted SuperNode authenticates with the same key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "node_key", folder / "node_key.pub"
    if not private.exists():
        key = ec.generate_private_key(ec.SECP384R1())
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
    return private, public


PING_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ping"
version = "1.0.0"
description = "Queries every SuperNode once (tests/deployment.py)"
license = "Apache-2.0"
dependencies = ["flwr"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "zkapex"

[tool.flwr.app.components]
serverapp = "ping:server"
clientapp = "ping:client"

[tool.flwr.app.config]
out = ""
nodes = 1
"""

PING_APP = '''"""The ServerApp sends one query to every SuperNode and writes {node id: its partition-id} to `out`."""
import json
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    want, end = int(context.run_config["nodes"]), time.monotonic() + 120
    while len(nodes := list(grid.get_node_ids())) < want and time.monotonic() < end:
        time.sleep(0.5)
    msgs = [Message(RecordDict({"q": ConfigRecord({"ping": 1})}), dst_node_id=n, message_type="query") for n in nodes]
    replies = grid.send_and_receive(msgs, timeout=120)
    out = {str(r.metadata.src_node_id): r.content["a"]["pong"] for r in replies if r.has_content()}
    with open(str(context.run_config["out"]), "w") as f:
        json.dump(out, f)


@client.query()
def pong(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"a": ConfigRecord({"pong": int(context.node_config["partition-id"])})}), reply_to=msg)
'''


def write_ping_app(folder: Path) -> Path:
    """A minimal Flower app (seconds per run, flwr only): to check a deployment's plumbing, e.g. TLS."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PING_PYPROJECT)
    (folder / "ping.py").write_text(PING_APP)
    return folder


# ---- the process table (Linux /proc; no psutil in the venv) ---------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped, is not alive)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, breadth first (a process tree built from /proc/*/stat ppids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return [p for p in out if alive(p)]


def program(pid: int) -> str:
    """The Flower program a process runs (``flwr-serverapp``, ``flower-superexec``, ...), from its cmdline."""
    for arg in cmdline(pid)[:2]:
        name = Path(arg).name
        if name.startswith(("flwr", "flower-")):
            return name
    return Path(cmdline(pid)[0]).name if cmdline(pid) else ""


@dataclass
class Proc:
    """A component started by the deployment: its Popen, its log file, and its whole process tree."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int = 0  # the API port it serves (SuperLink: all APIs; SuperNode: its Runtime API)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        return [self.pid, *descendants(self.pid)] if self.alive() else []

    def find(self, prog: str) -> list[int]:
        """Live processes below this one that run ``prog`` (e.g. ``flwr-serverapp``)."""
        return [p for p in descendants(self.pid) if program(p) == prog]

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL the whole tree (detached sessions included)."""
        tree = self.tree()
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree + descendants(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class RunResult:
    run_id: int | None
    returncode: int
    status: str  # `flwr ls` status, e.g. finished:completed / finished:failed; '' if unknown
    info: dict  # the run's `flwr ls --format json` entry
    log: Path  # the `flwr run` output
    wall_s: float


class Deployment:
    """SuperLink + SuperNodes as real processes on loopback (insecure, or ``tls=True``), and ``flwr`` against them."""

    def __init__(
        self,
        root: Path,
        supernodes: int = 3,
        node_config=None,
        env: dict | None = None,
        node_env: dict | None = None,
        isolation: str = "subprocess",
        tls: bool = False,
        auth: bool = False,
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "flwr-home"  # FLWR_HOME of the flwr CLI and the SuperLink
        self.n = supernodes
        self.node_config = node_config or (
            lambda i: f"partition-id={i} zkapex-state-dir='{self.root / f'supernode-{i}' / 'state'}'"
        )
        self.isolation = isolation
        self.certs = make_certificates(self.root / "certs") if tls else None  # None: --insecure everywhere
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (flower-superlink refuses it with --insecure)")
        self.auth = auth  # --enable-supernode-auth: only registered keys may connect
        self.registered: dict[int, int] = {}  # SuperNode index -> node id the SuperLink gave its public key
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.superlink: Proc | None = None
        self.supernodes: list[Proc] = []
        self.runs: list[RunResult] = []
        self._flwr_logs: list[Path] = []
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("RAY_ADDRESS", None)
        # SuperNodes (and the ClientApp processes they start) share the machine: one torch thread each
        self.node_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if node_env is None else node_env
        atexit.register(self.stop)

    # ---- life cycle -------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> Proc:
        log = self.root / f"{name}.log"
        f = open(log, "ab")
        popen = subprocess.Popen(
            [str(BIN / argv[0]), *argv[1:]],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or self.env,
            cwd=cwd or self.root,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        f.close()
        return Proc(name, popen, log)

    def write_connection(self) -> Path:
        """``$FLWR_HOME/config.toml`` with the connection ``deploy`` (also the default) to this SuperLink."""
        self.home.mkdir(parents=True, exist_ok=True)
        cfg = self.home / "config.toml"
        security = f'root-certificates = "{self.certs["ca"]}"' if self.certs else "insecure = true"
        cfg.write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}\n'
        )
        return cfg

    def _tls_args(self, server: bool) -> list[str]:
        if self.certs is None:
            return ["--insecure"]
        if server:
            return [
                "--ssl-ca-certfile",
                str(self.certs["ca"]),
                "--ssl-certfile",
                str(self.certs["cert"]),
                "--ssl-keyfile",
                str(self.certs["key"]),
            ]
        return ["--root-certificates", str(self.certs["ca"])]

    def start(self, timeout_s: float = 90.0) -> Deployment:
        self.write_connection()
        self.superlink = self._spawn(
            "superlink",
            [
                "flower-superlink",
                *self._tls_args(server=True),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--isolation",
                self.isolation,
                "--disable-runtime-dependency-installation",
                "--database",
                str(self.root / "superlink.db"),
                *(["--enable-supernode-auth"] if self.auth else []),
            ],
        )
        self.superlink.port = self.port
        wait_for_port(self.port, self.superlink.popen, timeout_s)
        for i in range(self.n):
            self.start_supernode(i)
        self.wait_for_nodes(timeout_s)
        return self

    def register_supernode(self, i: int) -> int:
        """``flwr supernode register`` SuperNode ``i``'s public key with the SuperLink; its node id."""
        _, public = make_node_key(self.root / f"supernode-{i}" / "auth")
        out = self.flwr("supernode", "register", str(public), CONNECTION, "--format", "json")
        try:
            node_id = int(json.loads(out.stdout)["node-id"])
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(
                f"flwr supernode register failed (rc {out.returncode}):\n{out.stdout}\n{out.stderr}"
            ) from None
        self.registered[i] = node_id
        return node_id

    def node_id_of(self, i: int) -> int | None:
        """The node id SuperNode ``i`` last logged (its latest start), or None."""
        found = re.findall(r"SuperNode ID: (\d+)", (self.root / f"supernode-{i}.log").read_text(errors="replace"))
        return int(found[-1]) if found else None

    def start_supernode(self, i: int, register: bool = True) -> Proc:
        """Start SuperNode ``i``; with authentication on, it signs with its key (registered first unless
        ``register=False``: an unknown key)."""
        home = self.root / f"supernode-{i}"
        (home / "state").mkdir(parents=True, exist_ok=True)
        auth = []
        if self.auth:
            if register and i not in self.registered:
                self.register_supernode(i)
            auth = ["--auth-supernode-private-key", str(make_node_key(home / "auth")[0])]
        port = free_port()
        proc = self._spawn(
            f"supernode-{i}",
            [
                "flower-supernode",
                *self._tls_args(server=False),
                "--superlink",
                self.address,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--isolation",
                self.isolation,
                "--node-config",
                self.node_config(i),
                *auth,
            ],
            env={**self.env, "FLWR_HOME": str(home / "flwr-home"), **self.node_env},
        )
        proc.port = port
        if register or not self.auth:
            wait_for_port(port, proc.popen, 60.0)
        # an unregistered key is turned away by the SuperLink, on a loaded machine sometimes before its
        # port is seen open: the caller waits for it to exit instead
        self.supernodes = [s for s in self.supernodes if s.name != proc.name] + [proc]
        return proc

    def wait_for_nodes(self, timeout_s: float = 90.0) -> None:
        """Until every SuperNode logged its node ID (it registered with the SuperLink)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if all("SuperNode ID" in s.log.read_text(errors="replace") for s in self.supernodes):
                return
            dead = [s.name for s in self.supernodes if not s.alive()]
            if dead or not self.superlink.alive():
                raise RuntimeError(f"{dead or 'superlink'} exited during start-up\n{self.logs()}")
            time.sleep(0.3)
        raise TimeoutError(f"SuperNodes did not register within {timeout_s:.0f} s\n{self.logs()}")

    def processes(self) -> list[Proc]:
        return [p for p in (self.superlink, *self.supernodes) if p is not None]

    def stop(self) -> None:
        for p in reversed(self.processes()):
            p.stop()

    def __enter__(self) -> Deployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- flwr ---------------------------------------------------------------------------------------------

    def flwr(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start_run(
        self, run_config: dict | None = None, app: str | Path = PROJECT_ROOT, stream: bool = True
    ) -> tuple[subprocess.Popen, Path]:
        """``flwr run APP deploy [--stream] --run-config ...`` without waiting: (Popen, its log file)."""
        log = self.root / f"flwr-run-{len(self._flwr_logs)}.log"
        self._flwr_logs.append(log)
        argv = [str(BIN / "flwr"), "run", str(app), CONNECTION]
        if stream:
            argv.append("--stream")
        if run_config:
            argv += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
        f = open(log, "wb")
        popen = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        f.close()
        return popen, log

    @staticmethod
    def run_id_of(log: Path, timeout_s: float = 60.0, popen: subprocess.Popen | None = None) -> int:
        """The run ID that ``flwr run`` printed ('Successfully started run N')."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if m := re.search(r"Successfully started run (\d+)", Path(log).read_text(errors="replace")):
                return int(m.group(1))
            if popen is not None and popen.poll() is not None:
                break
            time.sleep(0.3)
        raise RuntimeError(f"flwr run printed no run ID:\n{tail(log)}")

    def run_info(self, run_id: int) -> dict:
        """The run's ``flwr ls --run-id ID --format json`` entry ({} when flwr ls fails)."""
        res = self.flwr("ls", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(res.stdout).get("runs", [])
        except json.JSONDecodeError:
            return {}
        return next((r for r in runs if int(r["run-id"]) == run_id), {})

    def run_status(self, run_id: int) -> str:
        return self.run_info(run_id).get("status", "")

    def wait_for_run(self, run_id: int, timeout_s: float = 600.0, poll_s: float = 2.0) -> str:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if (status := self.run_status(run_id)).startswith(FINISHED):
                return status
            time.sleep(poll_s)
        raise TimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s\n{self.logs()}")

    def run(
        self, run_config: dict | None = None, app: str | Path = PROJECT_ROOT, timeout_s: float = 600.0
    ) -> RunResult:
        """``flwr run --stream`` to the end, then the run's final status from ``flwr ls``."""
        t0 = time.monotonic()
        popen, log = self.start_run(run_config, app=app)
        try:
            rc = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise TimeoutError(f"flwr run did not return within {timeout_s:.0f} s\n{self.logs()}") from None
        run_id = self.run_id_of(log, timeout_s=1.0)
        status = self.wait_for_run(run_id, timeout_s=60.0)  # the stream ends when the run's logs do
        result = RunResult(run_id, rc, status, self.run_info(run_id), log, time.monotonic() - t0)
        self.runs.append(result)
        return result

    # ---- the ServerApp process ----------------------------------------------------------------------------

    def serverapp_pids(self) -> list[int]:
        """The live ``flwr-serverapp`` processes (superlink → flower-superexec → flwr-serverapp, one per run)."""
        return self.superlink.find("flwr-serverapp") if self.superlink else []

    def clientapp_pids(self) -> list[int]:
        return [p for s in self.supernodes for p in s.find("flwr-clientapp")]

    def wait_for_serverapp(self, timeout_s: float = 60.0) -> int:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if pids := self.serverapp_pids():
                return pids[0]
            time.sleep(0.2)
        raise TimeoutError(f"no flwr-serverapp process after {timeout_s:.0f} s\n{self.logs()}")

    def kill_serverapp(self) -> int:
        """SIGKILL the running ServerApp process; returns its pid."""
        pid = self.wait_for_serverapp()
        os.kill(pid, signal.SIGKILL)
        return pid

    # ---- diagnostics ---------------------------------------------------------------------------------------

    def logs(self, lines: int = 40) -> str:
        """The tails of every log (superlink, supernodes, flwr run): for assertion messages."""
        parts = [(p.name, p.log) for p in self.processes()] + [(f.stem, f) for f in self._flwr_logs]
        return "\n".join(f"----- {name} ({log}) -----\n{tail(log, lines)}" for name, log in parts)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value) + "'"  # a TOML literal string: paths keep their backslashes
