"""Supervised fine-tuning on a tiny random Llama (real SmolLM2 tokenizer and chat template), and
two real steps on the bundled SmolLM2."""

import json
import os
import subprocess
import sys

import pytest

from ragtune import Workspace
from ragtune.errors import ConfigError, DatasetError
from ragtune.train.probe import final_answer
from ragtune.types import Example
from tests.conftest import gsm8k_like



@pytest.fixture
def gsm(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_like(24)))
    return path


def untracked(root):
    """A workspace whose runs skip MLflow (creating its database costs seconds per test)."""
    ws = Workspace.init(root)
    (ws.root / "ragtune.toml").write_text((ws.root / "ragtune.toml").read_text().replace('tracking_uri = ""', 'tracking_uri = "none"'))
    return Workspace(ws.root)


def tiny_config(ws, base, **kw):
    settings = dict(base=str(base), epochs=2.0, learning_rate=5e-3, batch_size=4, eval_fraction=0.2, checkpoint_steps=2,
                    warmup_ratio=0.0, max_length=384)
    settings.update(kw)
    return ws.config.override("train", **settings).train


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_only_assistant_tokens_carry_loss(tiny_llama_folder):
    from transformers import AutoTokenizer

    from ragtune.train.sft import IGNORE, encode

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_folder))
    ex = Example("e1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                        {"role": "assistant", "content": "6"}])
    enc = encode(ex, tok, 512)
    spans, current = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label == IGNORE:
            if current:
                spans.append(tok.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    spans.append(tok.decode(current)) if current else None
    assert spans == ["4<|im_end|>\n", "6<|im_end|>\n"]  # the answers and their end-of-turn, nothing else
    assert tok.decode(enc.input_ids).count("Be brief.") == 1
    with pytest.raises(DatasetError, match="more than max_length = 10"):
        encode(ex, tok, 10)


@pytest.mark.slow
def test_lora_loss_falls_and_the_model_is_registered(tmp_path, tiny_llama_folder, gsm):
    from ragtune.experiment.tracking import training_tracker
    from ragtune.models.registry import load_card
    from ragtune.train.finetune import finetune

    ws = Workspace.init(tmp_path / "ws")
    steps = []
    folder = finetune(ws.root, "tiny-gsm", gsm, tiny_config(ws, tiny_llama_folder), prompt_field="question",
                      completion_field="answer", on_step=steps.append, log=lambda _: None, track=training_tracker(ws))
    card = load_card(ws.root, "tiny-gsm")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.state_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    assert run.data.params["train.lora_r"] == "16" and run.data.metrics["eval_loss_after"] == card.metrics["eval_loss_after"]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == len(steps)
    assert card.kind == "lora" and card.metrics["eval_loss_after"] < card.metrics["eval_loss_before"]
    first, last = sum(s["loss"] for s in steps[:2]) / 2, sum(s["loss"] for s in steps[-2:]) / 2
    assert last < first and card.metrics["steps"] == len(steps) == steps[-1]["total_steps"]
    assert card.config["lora_r"] == 16 and len(card.data_sha256) == 64
    assert card.metrics["probe_ppl_before"] > 1 and card.metrics["probe_ppl_after"] > 1
    assert card.metrics["forgetting_flagged"] == (card.metrics["probe_ppl_change"] > 0.1
                                                  or card.metrics["general_score_change"] < -0.1)
    checks = json.loads((folder / "checks.json").read_text())  # every checked answer, base and tuned
    assert len(checks["general_prompts"]) == 24 and all(isinstance(g["tuned"], str) for g in checks["general_prompts"])
    held = checks["held_out"]
    assert held and all(h["expected"].isdigit() and h["prompt"] in gsm.read_text() for h in held)
    scored = sum(final_answer(h["tuned"]) == h["expected"] for h in held) / len(held)
    assert card.metrics["final_answer_em_after"] == scored and 0 <= card.metrics["final_answer_format_after"] <= 1
    assert (folder / "adapter" / "adapter_model.safetensors").exists() and (folder / "tokenizer").is_dir()
    assert not (ws.state_dir / "train" / "tiny-gsm").exists()  # the work folder goes once registered


def test_forgetting_is_flagged_past_the_threshold():
    from ragtune.train.probe import forgetting, probe_prompts, probe_texts

    assert len(probe_texts()) == 10 and len(probe_prompts()) == 24  # shipped with the package
    same = forgetting({"probe_ppl": 20.0, "general_score": 0.6}, {"probe_ppl": 21.0, "general_score": 0.55}, 0.1)
    worse = forgetting({"probe_ppl": 20.0}, {"probe_ppl": 23.0}, 0.1)
    forgot = forgetting({"probe_ppl": 20.0, "general_score": 0.6}, {"probe_ppl": 20.0, "general_score": 0.45}, 0.1)
    assert same["probe_ppl_change"] == pytest.approx(0.05) and not same["forgetting_flagged"]
    assert worse["probe_ppl_change"] == pytest.approx(0.15) and worse["forgetting_flagged"]
    assert forgot["general_score_change"] == pytest.approx(-0.15) and forgot["forgetting_flagged"]
    learned = forgetting({"final_answer_format": 0.1, "final_answer_em": 0.0}, {"final_answer_format": 0.9, "final_answer_em": 0.1}, 0.1)
    assert learned["final_answer_format_change"] == pytest.approx(0.8) and not learned["forgetting_flagged"]


@pytest.mark.parametrize("text, expected", [("so 3 + 4 = 7.\n#### 7", "7"), ("#### 1,250", "1250"), ("#### $18.00", "18"),
                                            ("####  -3.5\n", "-3.5"), ("The answer is 7.", None), ("#### 7 apples", None),
                                            ("#### 7\nand then more text", None)])
def test_final_answer_is_the_number_closing_the_answer(text, expected):
    assert final_answer(text) == expected


def test_batched_generation_matches_one_at_a_time(smollm2_base):
    """Left-padded batches give each prompt the answer it gets alone (greedy, the real SmolLM2)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.generate.transformers import generate_batch

    _, folder, _ = smollm2_base
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).train()
    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "What is the capital of France, and why?", "Count to three.")]
    together = generate_batch(model, tok, prompts, 12, batch_size=3)
    alone = [generate_batch(model, tok, [p], 12)[0] for p in prompts]
    assert together == alone and len(set(together)) == 3 and model.training  # mode restored


def test_adapter_round_trips(tmp_path, tiny_llama_folder, gsm):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.train.data import load_examples
    from ragtune.train.sft import CompletionLoss, build_model, encode, train_loop

    ws = untracked(tmp_path / "ws")
    cfg = tiny_config(ws, tiny_llama_folder, epochs=1.0)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_folder))
    encoded = [encode(e, tok, 384) for e in load_examples(gsm, "question", "answer")[:8]]
    model = build_model(tiny_llama_folder, cfg, 0)
    layers = model.get_base_model().get_decoder().layers
    hooked = []  # the memory-trimming hooks live only while training
    train_loop(model, encoded, cfg, CompletionLoss(tok.pad_token_id), on_step=lambda _: hooked.append(len(layers[0]._forward_hooks)))
    assert hooked and all(n == 1 for n in hooked) and not layers[0]._forward_hooks and not layers[0]._backward_hooks
    model.save_pretrained(str(tmp_path / "adapter"))
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama_folder)), str(tmp_path / "adapter"))
    ids = torch.tensor([encoded[0].input_ids])
    model.eval()
    with torch.no_grad():
        trained, loaded = model(input_ids=ids).logits, again.eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_folder))(input_ids=ids).logits
    assert torch.allclose(trained, loaded, atol=1e-5)
    assert not torch.allclose(trained, base, atol=1e-3)  # the adapter changed something


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_continues_where_a_killed_run_stopped(tmp_path, tiny_llama_folder, gsm):
    from ragtune.train.finetune import finetune

    ws = untracked(tmp_path / "ws")
    cfg = tiny_config(ws, tiny_llama_folder)
    kw = dict(prompt_field="question", completion_field="answer", log=lambda _: None)
    whole = finetune(ws.root, "whole", gsm, cfg, **kw)

    def die_at_5(record):
        if record["step"] == 5:
            raise Stop

    with pytest.raises(Stop):
        finetune(ws.root, "resumed", gsm, cfg, on_step=die_at_5, **kw)
    assert not (ws.state_dir / "models" / "resumed").exists()  # nothing half-registered
    state = json.loads((ws.state_dir / "train" / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["stats"]["steps"] == 4  # the last checkpoint (every 2 steps) before the kill
    with pytest.raises(ConfigError, match="--resume"):
        finetune(ws.root, "resumed", gsm, cfg, **kw)
    seen = []
    resumed = finetune(ws.root, "resumed", gsm, cfg, resume=True, on_step=seen.append, **kw)
    assert seen[0]["step"] == 5  # continued with the step after the checkpoint
    a, b = adapter_tensors(whole), adapter_tensors(resumed)
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-6 for k in a)
    with pytest.raises(ConfigError, match="nothing to resume"):
        finetune(ws.root, "other", gsm, cfg, resume=True, **kw)


def test_bad_data_is_refused_before_training(tmp_path, tiny_llama_folder):
    from ragtune.train.finetune import finetune

    ws = untracked(tmp_path / "ws")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n[1, 2]\n'
                   '{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DatasetError) as e:
        finetune(ws.root, "bad", bad, tiny_config(ws, tiny_llama_folder), log=lambda _: None)
    for line in ("line 2", "line 3", "line 4"):
        assert line in str(e.value)
    assert not (ws.state_dir / "train" / "bad").exists()
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 400, "completion": "ok"}) + "\n" + json.dumps({"prompt": "hi", "completion": "ok"}) + "\n")
    with pytest.raises(DatasetError, match=r"example 1 has \d+ tokens, more than max_length = 384"):
        finetune(ws.root, "long", long, tiny_config(ws, tiny_llama_folder), log=lambda _: None)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, tiny_llama_folder, gsm):
    """2 CPU processes (gloo) started by torchrun, and by accelerate launch, each taking half of
    every batch, end where one process does."""
    ws = untracked(tmp_path / "ws")
    args = ["-m", "ragtune.cli", "finetune", "sft", "--data", str(gsm), "--prompt-field", "question", "--completion-field", "answer",
            "--base", str(tiny_llama_folder), "--epochs", "1", "--lr", "5e-3", "--batch-size", "4", "--eval-fraction", "0.2",
            "-w", str(ws.root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = {"one": [], "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                 "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no"]}  # --multi_gpu: torchrun's launcher, gloo on CPU
    for name, launcher in launchers.items():
        done = subprocess.run([sys.executable, *launcher, *args, "--name", name], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    cards = {n: json.loads((ws.state_dir / "models" / n / "card.json").read_text()) for n in launchers}
    one = adapter_tensors(ws.state_dir / "models" / "one")
    assert cards["one"]["metrics"]["processes"] == 1
    for name in ("torchrun", "accelerate"):
        assert cards[name]["metrics"]["processes"] == 2
        assert cards[name]["metrics"]["steps"] == cards["one"]["metrics"]["steps"]
        assert cards[name]["metrics"]["examples_seen"] == cards["one"]["metrics"]["examples_seen"]
        assert abs(cards[name]["metrics"]["eval_loss_after"] - cards["one"]["metrics"]["eval_loss_after"]) < 1e-3
        other = adapter_tensors(ws.state_dir / "models" / name)
        assert max((one[k] - other[k]).abs().max() for k in one) < 1e-3


@pytest.mark.slow
def test_two_real_steps_on_smollm2_then_ask_with_the_result(tmp_path, smollm2_base, gsm, handbook_copy):
    from ragtune.train.finetune import finetune

    _, base, _ = smollm2_base
    ws = untracked(tmp_path / "ws")
    cfg = ws.config.override("train", base=str(base), epochs=1.0, batch_size=2, eval_fraction=0.0, max_length=512).train
    four = tmp_path / "four.jsonl"
    four.write_text("".join(gsm.read_text().splitlines(keepends=True)[:4]))
    steps = []
    finetune(ws.root, "real", four, cfg, prompt_field="question", completion_field="answer", on_step=steps.append, log=lambda _: None)
    assert [s["step"] for s in steps] == [1, 2] and all(0 < s["loss"] < 5 for s in steps)  # a trained model's loss, not random
    card = json.loads((ws.state_dir / "models" / "real" / "card.json").read_text())
    assert 1 < card["metrics"]["probe_ppl_before"] < 100  # SmolLM2 reads everyday English well; a random model would be ~49k
    assert abs(card["metrics"]["probe_ppl_change"]) < 0.1  # two small LoRA steps barely move it
    assert card["metrics"]["general_score_before"] >= 0.4  # the base answers many everyday questions (15 of 24 here)
    m = card["metrics"]  # greedy answers of a 135M model are brittle: two steps can flip a few of them
    assert m["forgetting_flagged"] == (m["probe_ppl_change"] > 0.1 or m["general_score_change"] < -0.1)
    checks = json.loads((ws.state_dir / "models" / "real" / "checks.json").read_text())
    assert sum("Paris" in g["base"] for g in checks["general_prompts"]) == 1 and checks["held_out"] == []  # nothing held out
    ws.ingest([handbook_copy])
    ws.config = ws.config.override("generate", model="real", max_tokens=24)
    answer = ws.ask("Who founded the observatory?")
    assert answer.generator == "transformers:real" and answer.text.strip() and answer.sources
