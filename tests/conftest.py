import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import servers
from tests.servers import free_port, free_ports  # noqa: F401 (tests import them from here)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# pytest-xdist workers share the cores: each sizes its thread pools (llama.cpp, ONNX Runtime, torch; its
# subprocesses inherit this) to its share, so two workers' busy-waiting threads do not fight over the same cores
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    share = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("RAGTUNE_THREADS", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)

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


def _unavailable(reason: str, require: str) -> None:
    """Skip, or fail when the variable ``require`` is 1 (CI)."""
    if os.environ.get(require) == "1":
        pytest.fail(f"{reason} ({require}=1)")
    pytest.skip(reason)


def _started(stack: ExitStack, server, require: str):
    """Enter ``server`` (a context manager of tests/servers.py); skip, or fail in CI, when it is unavailable."""
    try:
        return stack.enter_context(server)
    except servers.Unavailable as e:
        _unavailable(str(e), require)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 for the session (``servers.Postgres``). Skipped, with the
    reason, when no server binaries are installed or the server does not start, unless
    RAGTUNE_REQUIRE_POSTGRES=1 (CI), where that fails."""
    with ExitStack() as stack:
        yield _started(stack, servers.postgres(), PG)


@pytest.fixture(scope="session")
def postgres(postgres_server):
    """A function that creates a fresh database on the session's server and returns its URL."""
    return postgres_server.new_database


@pytest.fixture(scope="session")
def pgvector_url(postgres_server):
    """The URL of a database with the pgvector extension, for the session (tests keep apart by table prefix)."""
    try:
        return postgres_server.pgvector_database()
    except servers.Unavailable as e:
        _unavailable(str(e), PG)


S3_KEY_ENV, S3_SECRET_ENV = "RAGTUNE_TEST_S3_KEY", "RAGTUNE_TEST_S3_SECRET"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server on 127.0.0.1 for the session (SeaweedFS, ``servers.s3``) with an empty bucket. Its
    credentials are in $RAGTUNE_TEST_S3_KEY and $RAGTUNE_TEST_S3_SECRET (set for the session, so child
    processes have them too); yields ``(endpoint, bucket)``. Skipped, with the reason, when ``weed`` is
    missing or does not start, unless RAGTUNE_REQUIRE_S3=1 (CI), where that fails."""
    with ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        server = _started(stack, servers.s3(), "RAGTUNE_REQUIRE_S3")
        env.setenv(S3_KEY_ENV, server.key)
        env.setenv(S3_SECRET_ENV, server.secret)
        yield server.endpoint, server.bucket


@pytest.fixture
def s3_config(s3_server):
    """[store] settings of a LanceDB index at a fresh prefix of the session's S3 bucket."""
    import uuid

    from ragtune.config import StoreConfig

    endpoint, bucket = s3_server
    return StoreConfig(backend="lancedb", uri=f"s3://{bucket}/{uuid.uuid4().hex[:12]}/index", s3_endpoint=endpoint,
                       s3_allow_http=True, s3_key_env=S3_KEY_ENV, s3_secret_env=S3_SECRET_ENV)




@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray head for the session (``servers.ray_head``: 2 CPUs, no dashboard, token authentication
    off), stopped at the end by killing its own processes. Skipped, with the reason, when Ray is missing or
    does not start, unless RAGTUNE_REQUIRE_RAY=1 (CI), where that fails."""
    with ExitStack() as stack:
        yield _started(stack, servers.ray_head(), "RAGTUNE_REQUIRE_RAY")


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
