"""`ragtune cycle`: feedback → export → SFT + DPO candidate (a tiny random Llama as [train] base, so
training takes seconds) → the served model and the candidate answer the same questions → promoted
only when it wins by the margin; resumable; the promotion edits one line of ragtune.toml."""
import json

import pytest

from tests.conftest import HANDBOOK
from ragtune import Workspace
from ragtune.config import Config
from ragtune.errors import ConfigError
from ragtune.config import set_config_value
from ragtune.serve.cycle import run_cycle
from ragtune.serve.feedback import FeedbackStore, Response, new_id

pytestmark = pytest.mark.slow

QA = [{"id": "q1", "question": "Who founded the observatory?", "answers": ["Cornelius Vantreight"]},
      {"id": "q2", "question": "In which year was the observatory founded?", "answers": ["1931"]},
      {"id": "q3", "question": "How much is reimbursed per night for hotels?", "answers": ["240 credits"]}]


@pytest.fixture(scope="module")
def handbook_ws(tmp_path_factory):
    ws = Workspace.init(tmp_path_factory.mktemp("cycle") / "ws")
    ws.ingest([HANDBOOK])
    return ws


def workspace(handbook_ws, tiny_llama_folder, tmp_path):
    """The ingested handbook in a fresh copy of the workspace folder's settings and state."""
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(handbook_ws.root, root)
    ws = Workspace(root)
    return ws.with_config(ws.config.override("train", base=str(tiny_llama_folder), method="full", epochs=1.0, batch_size=4,
                                             learning_rate=1e-3, max_length=512, check_prompts=False, check_answers=0,
                                             eval_fraction=0.25, forgetting_threshold=1000.0)
                          .override("generate", max_tokens=24).override("rl", eval_prompts=2))


def feedback(ws):
    """What users of the served app said: thumbs with corrections on several prompts, and side-by-side choices."""
    with FeedbackStore(ws.state_dir / "feedback.sqlite") as store:
        for i in range(6):
            msgs = [{"role": "user", "content": f"Question {i} about the handbook?"}]
            good = store.add_response(Response(new_id("chatcmpl"), "rag", msgs, f"A grounded answer {i} [1].")).id
            bad = store.add_response(Response(new_id("chatcmpl"), "rag", msgs, f"No idea {i}.")).id
            store.add_feedback("thumb", good, label=True)
            store.add_feedback("thumb", bad, label=False, correction=f"The handbook says {i} [1].")
            store.add_feedback("ranking", ranking=[good, bad])


@pytest.fixture
def qa(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return path


@pytest.fixture(scope="module")
def first_turn(handbook_ws, tiny_llama_folder, tmp_path_factory):
    """One cycle with the default margin: (workspace, qa file, its record, its log, ragtune.toml before)."""
    tmp = tmp_path_factory.mktemp("turn")
    ws = workspace(handbook_ws, tiny_llama_folder, tmp)
    feedback(ws)
    path = tmp / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA))
    toml_before = (ws.root / "ragtune.toml").read_text()
    lines = []
    state = run_cycle(ws, path, cycle_id="c1", margin=0.02, log=lines.append, track=False)
    return ws, path, state, lines, toml_before


def test_a_candidate_that_does_not_win_is_not_promoted(first_turn, tiny_llama_folder):
    ws, qa, state, lines, toml_before = first_turn
    steps = state["steps"]
    assert steps["export"]["reports"]["sft"]["rows"] == 6 and steps["export"]["loss"] == "dpo"
    assert steps["train"]["models"] == ["cycle-c1-sft", "cycle-c1-dpo"] and steps["train"]["base"] == str(tiny_llama_folder)
    served, candidate = steps["evaluate"]["served"], steps["evaluate"]["candidate"]
    assert served["model"] == "smollm2" and candidate["model"] == "cycle-c1-dpo"
    assert served["metrics"]["f1"] > candidate["metrics"]["f1"]  # the bundled model beats a random 2-layer one
    decision = steps["decide"]
    assert not decision["promoted"] and "did not win by the margin" in decision["reason"]
    assert (ws.root / "ragtune.toml").read_text() == toml_before
    on_disk = json.loads((ws.state_dir / "cycles" / "c1" / "cycle.json").read_text())
    assert on_disk["steps"]["decide"] == decision


def test_a_rerun_goes_on_from_the_first_unfinished_step_and_a_winner_is_promoted(first_turn):
    """The decision is taken again with a margin the candidate meets (its step removed from
    cycle.json, as if the run had stopped there): nothing is exported, trained or evaluated again,
    and the candidate becomes [generate] model in ragtune.toml."""
    ws, qa, state, _, _ = first_turn
    path = ws.state_dir / "cycles" / "c1" / "cycle.json"
    record = json.loads(path.read_text())
    del record["steps"]["decide"]
    path.write_text(json.dumps(record))
    lines = []
    again = run_cycle(ws, qa, cycle_id="c1", margin=-1.0, log=lines.append, track=False)
    assert sum("skipped" in line for line in lines) == 3  # export, train, evaluate
    assert {k: again["steps"][k] for k in ("export", "train", "evaluate")} == {
        k: state["steps"][k] for k in ("export", "train", "evaluate")}
    assert again["steps"]["decide"]["promoted"] and "promoted cycle-c1-dpo" in again["steps"]["decide"]["reason"]
    assert Workspace(ws.root).config.generate.model == "cycle-c1-dpo"  # the next `ragtune serve` answers with it
    assert "# " in (ws.root / "ragtune.toml").read_text()  # the file's documentation is still there


def test_without_feedback_there_is_nothing_to_learn(handbook_ws, tiny_llama_folder, tmp_path, qa):
    ws = workspace(handbook_ws, tiny_llama_folder, tmp_path)
    state = run_cycle(ws, qa, cycle_id="c3", log=lambda line: None, track=False)
    assert not state["decision"]["promoted"] and "nothing to learn from yet" in state["decision"]["reason"]
    assert "train" not in state["steps"]


def test_set_config_value_edits_one_line_and_refuses_an_invalid_file(tmp_path):
    root = Workspace.init(tmp_path / "ws").root
    before = (root / "ragtune.toml").read_text()
    set_config_value(root, "generate", "model", "my-model")
    after = (root / "ragtune.toml").read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1] == 'model = "my-model"'
    assert Config.load(root / "ragtune.toml").generate.model == "my-model"
    with pytest.raises(ConfigError):
        set_config_value(root, "generate", "backend", "nonsense")
    assert (root / "ragtune.toml").read_text() == after
