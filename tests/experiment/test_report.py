"""The HTML run report: built from real run folders (``write_run``), scored with the real answer
metrics and ``aggregate``, checked as HTML in Python and rendered in a real Chromium."""

from html.parser import HTMLParser

import pytest

from tests.conftest import shoot
from ragtune.evaluate.answers import abstained, best, contains, exact_match, f1
from ragtune.evaluate.qa_eval import Prediction, aggregate
from ragtune.experiment.compare import Point, compare, compare_runs, dominates, question_score
from ragtune.experiment.report import nice_ticks, render_report, write_report
from ragtune.experiment.runs import load_run, write_run

QUESTIONS = [
    ("q1", "What is the capital of France?", ["Paris"], "geo.md"),
    ("q2", "Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"], "plays.md"),
    ("q3", "When did the Berlin Wall fall?", ["9 November 1989", "1989"], "history.md"),
    ("q4", "What is the boiling point of water at sea level?", ["100 degrees Celsius"], "physics.md"),
]
INJECTED = "<script>alert('pwned')</script> Christopher Marlowe"
# (run id, name, params, answers, total seconds per question): fast/good-enough, slow/best, slowest/worst.
RUNS = [
    ("20250101-bm25", "bm25-k3", {"retrieve.mode": "bm25", "retrieve.k": 3},
     ["Paris", "Shakespeare", "I don't know", "100 degrees"], 0.12),
    ("20250101-hybrid", "hybrid-k5", {"retrieve.mode": "hybrid", "retrieve.k": 5},
     ["Paris", "William Shakespeare", "1989", "100 degrees Celsius"], 0.30),
    ("20250101-dense", "dense-k5", {"retrieve.mode": "dense", "retrieve.k": 5},
     ["Paris, France", INJECTED, "1989", "Water boils quickly."], 0.45),
]


def prediction_row(qid, question, golds, source, text, total_s, gold_rank):
    retrieved = [{"rank": 1, "chunk_id": f"{source}#0", "doc_id": source, "source": f"docs/{source}"},
                 {"rank": 2, "chunk_id": "misc.md#3", "doc_id": "misc.md", "source": "docs/misc.md"}]
    prompt = (f"Answer from the sources and cite them as [n].\n\n[1] docs/{source}\n...\n[2] docs/misc.md\n...\n\n"
              f"Question: {question}")
    return {"id": qid, "question": question, "answers": golds, "prediction": text,
            "em": best(exact_match, text, golds), "f1": best(f1, text, golds), "contains": best(contains, text, golds),
            "abstained": abstained(text), "prompt": prompt, "retrieved": retrieved, "gold_rank": gold_rank,
            "ndcg": 1.0 if gold_rank == 1 else 0.0,  # one gold document: exact
            "citations": [1], "citation_method": "marker",
            "usage": {"prompt_tokens": 180 + 20 * len(golds), "completion_tokens": len(text.split())},
            "timings": {"retrieve_s": total_s / 6, "generate_s": total_s * 5 / 6, "total_s": total_s}}


def make_runs(root):
    runs = []
    for i, (run_id, name, params, texts, total_s) in enumerate(RUNS):
        rows = [Prediction(**prediction_row(*q, text, total_s + 0.01 * j, gold_rank=1 if i or j % 2 == 0 else None))
                for j, (q, text) in enumerate(zip(QUESTIONS, texts))]
        info = {"id": run_id, "name": name, "sweep": "modes", "arm": "rag", "status": "finished", "params": params,
                "config": {"retrieve": {k.split(".")[1]: v for k, v in params.items()}}, "started": f"2025-01-01T00:0{i}:00"}
        runs.append(write_run(root / run_id, info, [r.to_dict() for r in rows], aggregate(rows)))
    return [load_run(r.path) for r in runs]  # read back, as the CLI will


@pytest.fixture
def runs(tmp_path):
    runs = make_runs(tmp_path / "runs")
    f1s = [r.metrics["f1"] for r in runs]
    latencies = [r.metrics["total_p50_ms"] for r in runs]
    # the scenario the chart tests rely on: hybrid is best, bm25 fastest, dense dominated by hybrid
    assert f1s[1] > f1s[0] > f1s[2] and latencies[0] < latencies[1] < latencies[2]
    return runs


class Elements(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag, cls=None):
        return [a for t, a in self.tags if t == tag and (cls is None or cls in (a.get("class") or "").split())]


def test_report_shows_every_run_and_marks_the_pareto_front(runs, tmp_path):
    out = write_report(runs, tmp_path / "out" / "report.html")
    page = out.read_text(encoding="utf-8")
    for r in runs:
        assert r.id in page and r.name in page
    doc = Elements(page)
    points = doc.find("circle", "point")
    assert [p["data-run"] for p in points] == [r.id for r in runs]
    assert {p["data-run"] for p in doc.find("circle", "pareto")} == {"20250101-bm25", "20250101-hybrid"}
    assert len(doc.find("polyline", "front")) == 1
    assert "quality: F1" in page and "latency: total p50 ms" in page
    assert len([a for t, a in doc.tags if t == "tr" and "data-run" in a]) == 3 + 3 + 2  # metrics, costs, comparisons


def test_metrics_table_has_only_present_columns_and_highlights_the_best(runs, tmp_path):
    page = render_report(runs)
    table = page.split('id="metrics"')[1].split("</table>")[0]
    assert "<th>retrieve.mode</th>" in table and "<th>retrieve.k</th>" in table  # the settings the runs differ in
    assert table.count("<th>retrieve.mode</th>") == 1
    assert "sweep" not in table  # the same for every run
    assert "judge" not in table and "groundedness" not in table and "ndcg@k" in table  # only what runs have
    best_f1 = f"{runs[1].metrics['f1']:.3f}"
    assert f'<td class="num best">{best_f1}</td>' in table
    costs = page.split('id="costs"')[1].split("</table>")[0]
    fastest = f"{runs[0].metrics['total_p50_ms']:,.1f}"
    assert f'<td class="num best">{fastest}</td>' in costs and "latency (ms)" in costs


def test_untrusted_text_is_escaped_and_nothing_is_fetched(runs, tmp_path):
    page = write_report(runs, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page
    doc = Elements(page)
    assert not [a for _, a in doc.tags if "src" in a or "href" in a]
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_wins_and_losses_match_questions_by_id(runs):
    base, hybrid, dense = runs
    c = compare(base, hybrid, "f1")
    assert (len(c.wins), len(c.losses), c.ties, c.unmatched) == (2, 0, 2, 0)
    assert [d.base["id"] for d in c.wins] == ["q3", "q4"]  # 0 → 1 first, then 0.8 → 1
    c = compare(base, dense, "f1")
    assert {d.base["id"] for d in c.wins} == {"q3"} and {d.base["id"] for d in c.losses} == {"q1", "q2", "q4"}
    page = render_report(runs)
    assert 'id="comparisons"' in page and "Biggest losses" in page


def test_compare_runs_gives_metric_deltas_changed_settings_and_wins(runs):
    base, other = runs[0], runs[1]
    d = compare_runs(base, other)
    deltas = {name: delta for name, _, _, delta in d.metrics}
    assert deltas["f1"] == pytest.approx(other.metrics["f1"] - base.metrics["f1"]) and deltas["f1"] > 0
    assert ("retrieve.mode", "bm25", "hybrid") in d.settings and ("retrieve.k", 3, 5) in d.settings
    assert d.kind == "f1" and len(d.questions.diffs) == 4
    assert [w.base["id"] for w in d.questions.wins] == ["q3", "q4"]  # 'I don't know' -> '1989' first
    assert not d.questions.losses


def test_worst_questions_show_the_prompt_and_sources(runs):
    page = render_report(runs)
    worst = page.split("<h2>Worst questions</h2>")[1]
    assert "I don&#x27;t know" in worst and "docs/history.md" in worst
    assert "<details><summary>prompt</summary><pre>Answer from the sources" in worst


def test_pareto_dominance():
    a, b, c, d = (Point(None, q, lat) for q, lat in [(0.7, 100), (0.9, 300), (0.6, 400), (0.7, 100)])
    assert dominates(b, c) and dominates(a, c) and not dominates(a, b) and not dominates(b, a)
    assert not dominates(a, d) and not dominates(d, a)  # identical runs are both on the front


def test_nice_ticks_cover_the_range():
    assert nice_ticks(0, 430) == [0, 100, 200, 300, 400, 500]
    assert nice_ticks(0.35, 0.95) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.61, 0.74) == pytest.approx([0.6, 0.65, 0.7, 0.75])
    assert len(nice_ticks(5, 5)) >= 2


def test_question_scores_follow_the_quality_measure():
    row = {"f1": 0.5, "gold_rank": 3, "ndcg": 0.5}
    assert [question_score(row, kind) for kind in ("f1", "hit", "ndcg", None)] == [0.5, 1.0, 0.5, None]
    assert question_score({"gold_rank": None}, "hit") == 0.0  # searched, gold not in the top k
    assert question_score({"prediction": "x"}, "hit") is None and question_score({}, "f1") is None


def test_retrieval_only_runs_use_recall_and_gold_rank(tmp_path):
    runs = []
    for name, ranks, p50 in [("dense", [1, 3, None], 8.0), ("bm25", [2, None, None], 2.0)]:
        rows = [{"id": f"q{i}", "question": f"question {i}?", "gold_rank": rank,
                 "retrieved": [{"rank": 1, "chunk_id": "c", "doc_id": "d", "source": "s.md"}]}
                for i, rank in enumerate(ranks)]
        hits = [r is not None for r in ranks]
        metrics = {"recall@k": sum(hits) / len(hits), "mrr@k": sum(1 / r for r in ranks if r) / len(ranks),
                   "retrieve_p50_ms": p50}
        runs.append(write_run(tmp_path / name, {"id": name, "name": name, "params": {"mode": name}}, rows, metrics))
    page = render_report(runs)
    assert "quality: recall@k" in page and "latency: retrieve p50 ms" in page
    assert len(Elements(page).find("circle", "pareto")) == 2  # dense better, bm25 faster
    assert "gold at rank 3" in page and "gold not retrieved" in page
    c = compare(runs[0], runs[1], "hit")
    assert (len(c.wins), len(c.losses), c.ties) == (0, 1, 2)


def test_report_tolerates_missing_keys_and_odd_values(tmp_path):
    rows = [{"id": "q1", "question": "Why?"}, {},
            {"id": "q2", "question": "Who?", "answers": "Ada", "prediction": None, "f1": 0.0, "citations": 3,
             "prompt": [{"role": "user", "content": "Who? <b>bold</b>"}], "retrieved": "not a list"}]
    bare = write_run(tmp_path / "bare", {"id": "bare", "params": "not a dict"}, rows, {"f1": float("nan")})
    half = write_run(tmp_path / "half", {"id": "half", "name": "half"}, [], {})
    (half.path / "metrics.json").unlink()
    page = render_report([bare, load_run(half.path)], baseline=1)
    assert "unfinished" in page and "No run has both a quality metric" in page
    assert "&quot;role&quot;: &quot;user&quot;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page  # chat prompt shown as JSON, escaped
    assert "<dd>Ada</dd>" in page and "<dd>3</dd>" in page
    main = page.split("<main>")[1]
    assert "–" in main and "None" not in main and ">nan<" in main  # NaN shown as stored, not as a number


def test_bad_baseline_is_a_config_error(runs):
    from ragtune.errors import ConfigError

    with pytest.raises(ConfigError, match="--baseline 3"):
        render_report(runs, baseline=3)
    with pytest.raises(ConfigError, match="no runs"):
        render_report([])


@pytest.mark.slow
def test_report_renders_in_chromium(runs, tmp_path, browser_page):
    page, errors = browser_page
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    out = write_report(runs, tmp_path / "report.html")
    page.goto(out.as_uri())
    assert page.locator("svg circle.point").count() == 3
    assert page.locator("svg circle.point.pareto").count() == 2
    assert page.locator("table#metrics tbody tr").count() == 3
    assert page.locator("svg circle.point").first.bounding_box()["width"] > 0  # drawn, not just present
    shoot(page, tmp_path, "report.png")
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 0
