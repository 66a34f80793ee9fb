"""`ragtune compare`: the document-stratified split, changed facts written into edited copies and
re-ingested, the recommendation rule, and a whole small comparison on the handbook (a tiny random
Llama as the base, so training takes seconds: behaviour, not quality, is tested here)."""
import json
import shutil

import pytest

from tests.conftest import HANDBOOK, REPO
from ragtune import Workspace
from ragtune.errors import DatasetError, WorkspaceError
from ragtune.evaluate.qa import load_qa
from ragtune.experiment.rag_vs_ft import (ARMS, Edit, asks, changed_value, fact_kind, fresh_index, plan_edits, recommend,
                                          run_compare, split_questions, write_edited)
from ragtune.types import QAItem

COMPARE_QA = REPO / "examples" / "handbook-compare.jsonl"


def item(i, doc, answers=("x",)):
    return QAItem(f"q{i}", f"question {i}?", list(answers), [doc] if doc else [])


# -- the split ----------------------------------------------------------------------------------
def test_split_is_stratified_by_document_and_fixed_by_the_seed():
    items = [item(i, f"doc{i % 5}") for i in range(23)] + [item(100, "lonely.md")]
    split = split_questions(items, 0.3, seed=0)
    train_docs = {it.doc_ids[0] for it in split.train}
    assert split.stratified and split.documents == 6
    assert all(it.doc_ids[0] in train_docs for it in split.test)  # every test question's document was seen in training
    assert "q100" in {it.id for it in split.train}  # a document's only question stays in training
    assert {it.id for it in split.train}.isdisjoint({it.id for it in split.test})
    assert len(split.train) + len(split.test) == len(items)
    per_doc = {d: sum(it.doc_ids[0] == d for it in split.test) for d in train_docs}
    assert per_doc["doc0"] == round(5 * 0.3) and per_doc["doc4"] == round(4 * 0.3)
    again = split_questions(list(reversed(items)), 0.3, seed=0)
    assert {it.id for it in again.test} == {it.id for it in split.test}  # order does not matter, the seed does
    assert {it.id for it in split_questions(items, 0.3, seed=1).test} != {it.id for it in split.test}


def test_without_doc_ids_the_split_is_one_group():
    split = split_questions([item(i, None) for i in range(10)], 0.3)
    assert not split.stratified and len(split.test) == 3


def test_questions_without_answers_or_too_few_to_split_are_refused():
    with pytest.raises(DatasetError, match=r"2 question\(s\) have no answers \('q1', 'q2'\).*answers"):
        split_questions([item(0, "a"), item(1, "a", ()), item(2, "b", ())], 0.3)
    with pytest.raises(DatasetError, match="too few questions to split: 3 question.*on 3 document.*at least two questions"):
        split_questions([item(i, f"doc{i}") for i in range(3)], 0.3)


# -- freshness ----------------------------------------------------------------------------------
def test_changed_values_keep_the_shape_and_differ():
    assert changed_value("240 credits", "s").endswith(" credits") and changed_value("240 credits", "s") != "240 credits"
    day, month, year = changed_value("9 October 1987", "s").split()  # the numbers change, the words around them stay
    assert month == "October" and day != "9" and 3 <= abs(int(year) - 1987) <= 40  # a year stays a plausible year
    assert changed_value("KRO-Skyline", "s").startswith("KRO-")  # short capitals stay, words change
    assert changed_value("Cornelius Vantreight", "s") == changed_value("Cornelius Vantreight", "s")  # fixed by the seed
    assert changed_value("Cornelius Vantreight", "s") != changed_value("Cornelius Vantreight", "t")
    assert changed_value("a to b", "s") is None


def test_text_answers_become_another_answer_of_the_same_shape():
    others = ["Warsaw", "Kraków", "wreath", "dysentery", "Marie Curie", "Warsaw Uprising", "1987", "the Vistula"]
    assert changed_value("Wianki", "s", others) in {"Warsaw", "Kraków"}  # one capitalised word for one
    assert changed_value("typhus", "s", others) in {"wreath", "dysentery"}
    assert changed_value("Gdańsk", "s", others, avoid="from Kraków to Gdańsk") == "Warsaw"  # not a value the text has
    assert changed_value("Pierre Curie", "s", others) != "Marie Curie"  # shares a word: invented words instead
    assert changed_value("Pierre Curie", "s", others + ["Niels Bohr"]) in {"Niels Bohr", "Warsaw Uprising"}
    assert changed_value("the Oder", "s", others) == "the Vistula"  # short words such as "the" may be shared


@pytest.fixture(scope="module")
def handbook_ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    shutil.copytree(HANDBOOK, root / "handbook", ignore=shutil.ignore_patterns("_*.py"))
    ws = Workspace.init(root / "ws")
    ws.ingest([root / "handbook"])
    return ws


def test_changed_facts_are_written_into_edited_copies_and_reingested(handbook_ws, tmp_path):
    ws = handbook_ws
    test = load_qa(COMPARE_QA)
    edits, skipped = plan_edits(ws, test, 6, seed=0)
    assert len(edits) == 6
    assert not any(e.source.endswith((".pdf", ".docx")) for e in edits)  # binary formats are not edited
    files, kept = write_edited(ws, edits, tmp_path / "edited")
    assert sorted(kept, key=lambda e: e.question) == sorted(edits, key=lambda e: e.question)
    for e in edits:
        text = files[e.source].read_text()
        assert e.new in text and e.old not in text
    before = {r["text"] for r in ws.store.rows(["text"])}
    view, report = fresh_index(ws, tmp_path / "fresh", files)
    rows = view.store.rows(["source", "text"])
    fresh_text = " ".join(r["text"] for r in rows)
    assert all(e.new in fresh_text for e in edits)
    assert not any(e.old in r["text"] for e in edits for r in rows if r["source"].endswith(files[e.source].name))
    assert not any(r["source"] in files for r in rows)  # the originals of the edited files are left out
    assert {r["text"] for r in ws.store.rows(["text"])} == before  # the workspace's own index is untouched
    assert report.chunks_embedded < report.chunks_written  # unchanged chunks came from the embedding cache
    hits = view.search(test[[it.id for it in test].index(edits[0].question)].question, k=3)
    assert any(edits[0].new in h.text for h in hits)


def test_questions_answered_by_a_number_or_a_name_are_edited_first(tmp_path):
    assert [fact_kind(a) for a in ("1949", "240 credits", "Cornelius Vantreight", "KRO-Skyline", "typhus and smallpox",
                                   "the Oder")] == ["number", "number", "name", "name", "phrase", "phrase"]
    ws = Workspace.init(tmp_path / "ws")
    phrases = ["a wooden hut", "typhus and smallpox", "material about live performance", "opened the gates",
               "large-scale regeneration", "a river", "returned to earth", "their own families"]
    facts = ["1931", "Cornelius Vantreight"]
    data = tmp_path / "paras.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "title": "History", "text": f"Paragraph {i} says: {a}."}) + "\n"
                            for i, a in enumerate(phrases + facts)))
    ws.ingest([data])
    test = [QAItem(f"q{i}", f"What does paragraph {i} say?", [a], [f"p{i}"]) for i, a in enumerate(phrases + facts)]
    test[-2].answers.insert(0, "the year of the flood")  # the value edited is the answer found in the text: a number
    test.append(QAItem("q-gone", "What does the lost paragraph say?", ["1066"], ["p-gone"]))
    for seed in range(3):
        edits, skipped = plan_edits(ws, test, 3, seed=seed, question_set=test)
        assert {(e.old, fact_kind(e.old)) for e in edits[:2]} == {("1931", "number"), ("Cornelius Vantreight", "name")}
        assert fact_kind(edits[2].old) == "phrase" and edits[2].old in phrases  # then the others, when there are not enough
        assert skipped == {"no_document": 1, "file_type": 0, "value_not_in_text": 0, "unchangeable": 0}


def test_a_name_is_replaced_by_an_answer_to_a_question_asked_the_same_way(tmp_path):
    assert [asks(q) for q in ("Who led it?", "In whose name?", "Where was it held?", "How many were there?", "Name it.")] == \
        ["who", "who", "where", "how many", ""]
    ws = Workspace.init(tmp_path / "ws")
    rows = [("Who led the expedition?", "Colonel Monckton"), ("Who signed the treaty?", "Donald Turner"),
            ("Where did the army camp?", "Prospect Park"), ("Where was the fort?", "Fort Duquesne"),
            ("Which ship sank?", "Royal George")]
    data = tmp_path / "paras.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "title": "War", "text": f"It was {a}."}) + "\n" for i, (_, a) in enumerate(rows)))
    ws.ingest([data])
    items = [QAItem(f"q{i}", q, [a], [f"p{i}"]) for i, (q, a) in enumerate(rows)]
    for seed in range(6):
        edits, _ = plan_edits(ws, items[:1], 1, seed=seed, question_set=items)
        assert [e.new for e in edits] == ["Donald Turner"]  # a person for a person, not a place of the same shape
        edits, _ = plan_edits(ws, items[4:], 1, seed=seed, question_set=items)
        assert edits[0].new in {"Colonel Monckton", "Donald Turner", "Prospect Park", "Fort Duquesne"}  # no other "which"


def test_records_files_are_edited_record_by_record(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    data = tmp_path / "paras.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "title": "Prices", "text": f"Paragraph {i}: the fee is 240 credits."}) + "\n"
                            for i in range(3)))
    ws.ingest([data])
    source = ws.store.rows(["source"])[0]["source"]
    files, kept = write_edited(ws, [Edit("q", "p1", source, "240 credits", "517 credits")], tmp_path / "edited")
    rows = [json.loads(line) for line in files[source].read_text().splitlines()]
    assert [r["text"].endswith("517 credits.") for r in rows] == [False, True, False] and len(kept) == 1


# -- the recommendation ---------------------------------------------------------------------------
def figures(**f1):
    base = {"closed-book": dict(f1=0.04, prompt_tokens=40, freshness=0.0),
            "rag": dict(f1=0.25, prompt_tokens=240, freshness=0.9),
            "ft": dict(f1=0.07, prompt_tokens=40, freshness=0.0, forgetting_flagged=False),
            "ft+rag": dict(f1=0.31, prompt_tokens=240, freshness=0.85, forgetting_flagged=False)}
    for arm, value in f1.items():
        base[arm.replace("_", "+")]["f1"] = value
    return {arm: {**a, "fresh_questions": 20} for arm, a in base.items()}


def test_the_recommendation_follows_the_numbers():
    r = recommend(figures(), 0.02)
    assert r["choice"] == "ft+rag"
    assert "RAFT" in r["text"] and "+0.060 F1 over RAG alone" in r["text"] and "6.0x the prompt tokens" in r["text"]
    assert "17/20 fresh answers" in r["text"] and "0/20 fresh answers" in r["text"]
    assert recommend(figures(ft_rag=0.26), 0.02)["choice"] == "rag"  # within the margin: the fresher one
    assert recommend(figures(ft_rag=0.26), 0.0)["choice"] == "ft+rag"
    assert recommend(figures(ft=0.5), 0.02)["choice"] == "ft"
    no_help = figures(rag=0.05, ft=0.05, ft_rag=0.05)
    assert recommend(no_help, 0.02)["choice"] == "rag"  # as good, and it follows changed documents
    for arm in ARMS:
        no_help[arm]["freshness"] = 0.0
    r = recommend(no_help, 0.02)
    assert r["choice"] == "closed-book" and r["text"].startswith("neither helps by more than 0.02 F1")
    flagged = figures()
    flagged["ft+rag"]["forgetting_flagged"] = True
    r = recommend(flagged, 0.1)  # ft+rag and rag tie within 0.1, ft+rag forgot: rag
    assert r["choice"] == "rag" and "flagged by the forgetting checks" in r["text"]
    assert r["text"] != recommend(figures(), 0.1)["text"]


# -- a whole comparison -----------------------------------------------------------------------------
def tiny_settings(ws, tiny_llama_folder):
    return ws.with_config(ws.config.override("train", base=str(tiny_llama_folder), method="full", batch_size=8,
                                             learning_rate=1e-3, check_prompts=False, check_answers=0, eval_fraction=0.0)
                          .override("compare", epochs=1.0, fresh_questions=4).override("generate", max_tokens=8))


@pytest.fixture(scope="module")
def comparison(handbook_ws, tiny_llama_folder, tmp_path_factory):
    copy = tmp_path_factory.mktemp("whole") / "copy"
    shutil.copytree(handbook_ws.root.parent, copy)  # the workspace and the handbook beside it (sources are relative)
    ws = tiny_settings(Workspace(copy / "ws"), tiny_llama_folder)
    lines = []
    state = run_compare(ws, COMPARE_QA, compare_id="c1", log=lines.append)
    return ws, state, lines


@pytest.mark.slow
def test_a_comparison_trains_evaluates_and_tracks_four_arms(comparison):
    from ragtune.experiment.runs import RUNS_DIR, load_run
    from ragtune.experiment.tracking import tracker_for
    from ragtune.models.registry import load_card

    ws, state, lines = comparison
    steps = state["steps"]
    assert steps["split"]["test"] == len(load_qa(ws.state_dir / "compare" / "c1" / "test.jsonl")) > 0
    runs = {arm: load_run(ws.state_dir / RUNS_DIR / steps[f"evaluate {arm}"]["run"]) for arm in ARMS}
    assert {r.info["params"]["compare_arm"] for r in runs.values()} == set(ARMS)
    assert runs["rag"].info["arm"] == "rag" and runs["ft"].info["arm"] == "closed-book"
    assert runs["ft"].info["environment"]["generator"] != runs["closed-book"].info["environment"]["generator"]
    assert all(len(r.predictions) == steps["split"]["test"] for r in runs.values())
    assert runs["rag"].metrics["prompt_tokens_mean"] > 2 * runs["closed-book"].metrics["prompt_tokens_mean"]
    mlflow = tracker_for(ws).client.search_runs([tracker_for(ws).experiment_id("compare")])
    assert len(mlflow) == 4
    for arm in ("ft", "ft+rag"):
        trained = steps["train"][arm]
        card = load_card(ws.root, trained["model"])
        assert trained["train_s"] == card.train_time_s > 0 and trained["trained_tokens"] > 0
        assert "probe_ppl_before" in trained["forgetting"] and "probe_ppl_after" in trained["forgetting"]
    raft = [json.loads(line) for line in (ws.state_dir / "compare" / "c1" / "ft-rag.jsonl").read_text().splitlines()]
    assert all("<source" in row["messages"][-2]["content"] for row in raft)  # question + retrieved passages -> answer


@pytest.mark.slow
def test_freshness_is_measured_on_edited_and_reingested_documents(comparison):
    ws, state, _ = comparison
    fresh = state["steps"]["freshness"]
    assert fresh["questions"] == 4 and set(fresh["arms"]) == set(ARMS)
    for arm, f in fresh["arms"].items():
        follows = [e["new"].lower() in a.lower() for e, a in zip(fresh["edits"], f["answers"])]
        assert f["freshness"] == pytest.approx(sum(follows) / 4)
        # among the questions the arm answered right before the change (from its evaluation run's predictions)
        run = ws.state_dir / "runs" / state["steps"][f"evaluate {arm}"]["run"] / "predictions.jsonl"
        right = {p["id"] for p in map(json.loads, run.read_text().splitlines()) if p["contains"]}
        knew = [e["question"] in right for e in fresh["edits"]]
        assert f["right_before"] == sum(knew)
        assert f["freshness_of_right"] == (pytest.approx(sum(n for n, k in zip(follows, knew) if k) / sum(knew)) if any(knew) else None)
        kinds = [fact_kind(e["old"]) for e in fresh["edits"]]  # the new values given, per kind of fact changed
        assert f["by_kind"] == {k: [sum(n for n, kk in zip(follows, kinds) if kk == k), kinds.count(k)] for k in set(kinds)}
    index = ws.state_dir / "compare" / "c1" / "fresh" / "index"
    view = ws.with_config(ws.config.override("store", path=str(index.relative_to(ws.root))))
    text = " ".join(r["text"] for r in view.store.rows(["text"]))
    assert all(e["new"] in text for e in fresh["edits"])
    # the RAG arms count the prompts that held the edited passage: what the fresh index retrieves for the question
    questions = {it.id: it.question for it in load_qa(ws.state_dir / "compare" / "c1" / "test.jsonl")}
    retrieved = [any(e["new"] in h.text for h in view.search(questions[e["question"]], k=ws.config.retrieve.k)) for e in fresh["edits"]]
    for arm, f in fresh["arms"].items():
        assert f["shown"] == (sum(retrieved) if arm in ("rag", "ft+rag") else None)


@pytest.mark.slow
def test_a_rerun_with_the_id_reuses_every_step(comparison):
    ws, state, _ = comparison
    lines = []
    again = run_compare(ws, COMPARE_QA, compare_id="c1", log=lines.append)
    assert sum("done in an earlier run, skipped" in line for line in lines) == len(state["steps"])
    assert again["recommendation"] == state["recommendation"]
    assert state["recommendation"]["choice"] in ARMS and state["recommendation"]["text"].count("F1") >= 4


def test_bad_input_stops_before_anything_is_written(handbook_ws, tmp_path):
    ws = Workspace(handbook_ws.root)
    no_answers = tmp_path / "qa.jsonl"
    no_answers.write_text(json.dumps({"id": "a", "question": "Where?", "doc_ids": ["onboarding.md"]}) + "\n"
                          + json.dumps({"id": "b", "question": "When?", "answers": ["now"]}) + "\n")
    with pytest.raises(DatasetError, match="have no answers"):
        run_compare(ws, no_answers, compare_id="bad1")
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"id": f"q{i}", "question": "Q?", "answers": ["a"], "doc_ids": [f"d{i}"]}) + "\n"
                           for i in range(3)))
    with pytest.raises(DatasetError, match="too few questions"):
        run_compare(ws, few, compare_id="bad2")
    with pytest.raises(DatasetError, match="--docs .*missing: no such file or folder"):
        run_compare(ws, COMPARE_QA, docs=tmp_path / "missing", compare_id="bad3")
    empty = Workspace.init(tmp_path / "empty")
    with pytest.raises(WorkspaceError, match="index .* is empty: give the documents with --docs"):
        run_compare(empty, COMPARE_QA, compare_id="bad4")
    assert not (ws.state_dir / "compare").exists() and not (empty.state_dir / "compare").exists()


def test_without_a_question_set_too_few_synthetic_questions_stop_before_anything_is_written(handbook_ws, tiny_llama_folder):
    ws = handbook_ws.with_config(handbook_ws.config.override("generate", backend="transformers", model=str(tiny_llama_folder),
                                                             max_tokens=8))
    with pytest.raises(DatasetError, match=r"no --qa, and the 0 synthetic question\(s\) .* cannot be split .*--synth N"):
        run_compare(ws, None, compare_id="synth", synth_questions=2)
    assert not (ws.state_dir / "compare").exists()


@pytest.mark.slow
def test_the_command_goes_on_with_a_comparison_and_prints_the_arms_and_the_recommendation(comparison):
    from ragtune.config import set_config_value
    from tests.conftest import run_cli

    ws, state, _ = comparison
    set_config_value(ws.root, "train", "base", ws.config.train.base)  # the tiny base, as in the fixture's settings
    done = run_cli("compare", "--qa", COMPARE_QA, "--id", "c1", "-w", ws.root)
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "comparison c1 · 22 training / 12 test questions" in out
    assert all(f"{arm} " in out for arm in ARMS) and "train s" in out
    assert " ".join(state["recommendation"]["text"].split()) in out
    missing = run_cli("compare", "--qa", "nowhere.jsonl", "-w", ws.root)
    assert missing.returncode != 0 and "--qa nowhere.jsonl: no such file or folder" in missing.stderr


@pytest.mark.slow
def test_the_comparison_page_renders_in_chromium(comparison, tmp_path, browser_page):
    from tests.conftest import run_cli, shoot

    ws, state, _ = comparison
    page, errors = browser_page
    out = tmp_path / "compare.html"
    done = run_cli("report", "--compare", "c1", "-o", out, "-w", ws.root)
    assert done.returncode == 0, done.stderr
    unknown = run_cli("report", "--compare", "nope", "-o", tmp_path / "x.html", "-w", ws.root)
    assert unknown.returncode != 0 and "no comparison 'nope'" in unknown.stderr and "known: c1" in unknown.stderr
    page.goto(out.as_uri())
    assert page.locator("#recommendation").inner_text().startswith(state["recommendation"]["text"][:40])
    assert page.locator("table#arms tbody tr").count() == 4
    assert page.locator("table#metrics tbody tr").count() == 4  # the four tracked runs below
    assert page.locator("svg.bars rect.fresh").count() == 4 and page.locator("svg.bars rect.forget").count() == 2
    fresh, note = state["steps"]["freshness"]["arms"], page.locator("#freshness-note").inner_text()
    assert all(f"{arm} {fresh[arm]['shown']}/4" in note for arm in ("rag", "ft+rag"))  # the edited passage in the prompt
    assert all((f"{arm} " in note.split("right before the change")[1]) == bool(fresh[arm]["right_before"]) for arm in ("closed-book", "ft"))
    assert page.locator("#comparison svg circle.point").count() == 4
    shoot(page, tmp_path, "compare.png")
    assert errors == []
