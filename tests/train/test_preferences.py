"""Preference data: every TRL format read into conversations, every bad row listed, HH-RLHF imported."""

import json

import pytest

from ragtune.errors import ConfigError, DatasetError
from ragtune.train.preferences import Pair, Thumb, hh_messages, import_hh, load_preferences, split_pairs
from tests.conftest import run_cli

USER = [{"role": "user", "content": "What colour is the sky?"}]


def write(tmp_path, rows, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_explicit_and_implicit_pairs_become_the_same_conversations(tmp_path):
    explicit = {"id": "e", "prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."}
    conversational = {"id": "c", "prompt": USER, "chosen": [{"role": "assistant", "content": "Blue on a clear day."}],
                      "rejected": [{"role": "assistant", "content": "Purple."}]}
    implicit_messages = {"id": "m", "chosen": USER + [{"role": "assistant", "content": "Blue, mostly."}],
                         "rejected": USER + [{"role": "assistant", "content": "Red."}]}
    implicit_text = {"id": "t", "chosen": "Question: what colour is the sky? Answer: blue", "rejected": "Question: what colour is the sky? Answer: bright red"}
    prefs = load_preferences(write(tmp_path, [explicit, conversational, implicit_messages, implicit_text]), "dpo")
    e, c, m, t = prefs.pairs
    assert prefs.kind == "pairs" and not prefs.thumbs
    assert e == Pair("e", USER, [{"role": "assistant", "content": "Blue."}], [{"role": "assistant", "content": "Green."}])
    assert c.prompt == USER and c.rejected == [{"role": "assistant", "content": "Purple."}]
    assert m.prompt == USER and m.chosen == [{"role": "assistant", "content": "Blue, mostly."}]
    assert t.prompt == [{"role": "user", "content": "Question: what colour is the sky? Answer:"}]  # cut at a word boundary
    assert (t.chosen[0]["content"], t.rejected[0]["content"]) == ("blue", "bright red")


def test_rankings_expand_into_pairs_with_margins_from_scores(tmp_path):
    ordered = {"id": "r", "prompt": "Name a colour.", "completions": ["Blue.", "Teal, maybe.", "I can't."]}
    scored = {"id": "s", "prompt": "Name a fruit.", "completions": ["Apple.", "Rock.", "Pear."], "scores": [2, 0, 1.5]}
    pairs = load_preferences(write(tmp_path, [ordered, scored])).pairs
    by_id = {p.id: p for p in pairs}
    assert set(by_id) == {"r/0>1", "r/0>2", "r/1>2", "s/0>2", "s/0>1", "s/2>1"}
    assert by_id["r/0>2"].chosen[0]["content"] == "Blue." and by_id["r/0>2"].margin is None
    assert by_id["s/2>1"].chosen[0]["content"] == "Pear." and by_id["s/2>1"].margin == pytest.approx(1.5)


def test_likes_and_dislikes_are_thumbs(tmp_path):
    rows = [{"prompt": USER, "completion": "Blue.", "label": True}, {"prompt": "Sky colour?", "completion": "Green.", "label": False}]
    prefs = load_preferences(write(tmp_path, rows), "kto")
    assert prefs.kind == "thumbs" and [t.label for t in prefs.thumbs] == [True, False]
    assert prefs.thumbs[1] == Thumb("2", [{"role": "user", "content": "Sky colour?"}], [{"role": "assistant", "content": "Green."}], False)


def test_every_bad_row_is_listed_by_line(tmp_path):
    rows = [{"prompt": "Q?", "chosen": "A.", "rejected": "A."},  # 1: same answer
            {"prompt": "Q?", "chosen": "A."},  # 2: missing rejected
            {"prompt": "", "chosen": "A.", "rejected": "B."},  # 3: empty prompt
            {"chosen": "Totally different", "rejected": "words here"},  # 4: no shared prefix
            "{not json",  # 5
            {"prompt": "Q?", "completion": "A.", "label": True},  # 6: another kind
            {"prompt": [{"role": "assistant", "content": "hi"}], "chosen": "A.", "rejected": "B."},  # 7: prompt ends with assistant
            {"prompt": "Q?", "chosen": "A.", "rejected": "B."},  # 8: fine
            {"prompt": "Q?", "chosen": "A.", "rejected": "B."},  # 9: duplicate of 8
            {"chosen": USER + [{"role": "assistant", "content": "x"}], "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "y"}]}]  # 10
    with pytest.raises(DatasetError) as e:
        load_preferences(write(tmp_path, rows))
    message = str(e.value)
    assert "10 bad row(s)" not in message and "9 bad row(s)" in message
    for expected in ("line 1: 'chosen' and 'rejected' are the same answer", "line 2: missing 'rejected'", "line 3: 'prompt' is empty",
                     "line 4: 'chosen' and 'rejected' share no beginning", "line 5: not valid JSON", "line 6: a thumbs row in a file of pairs",
                     "line 7: 'prompt' must end with a user turn", "line 9: duplicate of line 8", "line 10: 'chosen' and 'rejected' share no leading messages"):
        assert expected in message, expected


def test_a_task_refuses_a_kind_it_cannot_learn_from(tmp_path):
    thumbs = write(tmp_path, [{"prompt": "Q?", "completion": "A.", "label": True}])
    with pytest.raises(DatasetError, match=r"holds thumbs .*--task dpo takes pairs .* or rankings"):
        load_preferences(thumbs, "dpo")
    with pytest.raises(ConfigError, match="--task 'sft'"):
        load_preferences(thumbs, "sft")
    with pytest.raises(DatasetError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")


def test_split_keeps_every_pair_of_a_prompt_on_one_side(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Question {i}?", "completions": ["good", "fine", "bad"]} for i in range(30)]
    pairs = load_preferences(write(tmp_path, rows)).pairs
    train, held = split_pairs(pairs, 0.2, seed=1)
    assert held and train and len(train) + len(held) == 90
    assert not {json.dumps(p.prompt) for p in train} & {json.dumps(p.prompt) for p in held}
    assert split_pairs(pairs, 0.2, seed=1) == (train, held)  # deterministic


HH_CHOSEN = "\n\nHuman: Why is the sky blue?\n\nAssistant: Rayleigh scattering.\n\nHuman: Say more.\n\nAssistant: Short wavelengths scatter most."
HH_REJECTED = "\n\nHuman: Why is the sky blue?\n\nAssistant: Rayleigh scattering.\n\nHuman: Say more.\n\nAssistant: No."


def test_import_hh_gives_conversational_pairs_and_counts_what_it_skips(tmp_path):
    assert hh_messages(HH_CHOSEN)[-1] == {"role": "assistant", "content": "Short wavelengths scatter most."}
    src = write(tmp_path, [{"id": "a", "chosen": HH_CHOSEN, "rejected": HH_REJECTED},
                           {"id": "b", "chosen": HH_CHOSEN, "rejected": HH_CHOSEN},
                           {"id": "c", "chosen": HH_CHOSEN, "rejected": "\n\nHuman: Other?\n\nAssistant: No."},
                           {"id": "d", "chosen": "plain text", "rejected": "more"}], "hh.jsonl")
    rows, stats = import_hh(src)
    assert stats == {"read": 4, "written": 1, "parted_early": 1, "same_answer": 1, "empty_answer": 0, "not_hh": 1}
    (row,) = rows
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user"]
    assert row["chosen"] == [{"role": "assistant", "content": "Short wavelengths scatter most."}]
    out = tmp_path / "pairs.jsonl"
    r = run_cli("data", "import-hh", src, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote 1 pairs" in r.stdout and "1 parted before the last answer" in r.stdout
    assert load_preferences(out).pairs[0].prompt == row["prompt"]
