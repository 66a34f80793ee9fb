"""The ``ragtune`` command: a thin table over the library.

Each command parses flags, calls one library function and prints the result. Library errors
(``RagtuneError``) become one line on stderr and a non-zero exit code, never a traceback.
Heavy imports happen inside the commands, so ``ragtune --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Optional

import typer

from ragtune.errors import ConfigError, RagtuneError
from ragtune.progress import RichProgress

app = typer.Typer(help="RAG or fine-tuning? Build, measure and improve both, offline.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
index_app = typer.Typer(help="Inspect and maintain the index.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval and answers.", no_args_is_help=True)
data_app = typer.Typer(help="Question sets and other data: import, validate.", no_args_is_help=True)
experiment_app = typer.Typer(help="Sweep the workspace's choices on a question set.", no_args_is_help=True)
runs_app = typer.Typer(help="Tracked evaluation runs (.ragtune/runs/, MLflow).", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")
finetune_app = typer.Typer(help="Fine-tune: the generator on demonstrations (sft) or preferences (dpo, kto, rl); reward models on preferences (reward).", no_args_is_help=True)
models_app = typer.Typer(help="Fine-tuned models registered in the workspace (.ragtune/models/).", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(runs_app, name="runs")
app.add_typer(finetune_app, name="finetune")
app.add_typer(models_app, name="models")
feedback_app = typer.Typer(help="What users said about served answers (`ragtune serve`): counts, export as training data.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")

WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", "-w", help="Workspace folder (default: the current folder or a parent with ragtune.toml).", show_default=False)]
ModeOpt = Annotated[Optional[str], typer.Option("--mode", "-m", help="dense | bm25 | hybrid (default: [retrieve] mode).", show_default=False)]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _workspace(path: Optional[Path]):
    from ragtune.workspace import Workspace

    return Workspace(path)


@app.command()
def init(folder: Annotated[Path, typer.Argument(help="Folder for the workspace (created if missing).")] = Path("."),
         force: Annotated[bool, typer.Option("--force", help="Overwrite an existing ragtune.toml with the defaults.")] = False) -> None:
    """Create a workspace: ragtune.toml (documented settings) and the .ragtune/ state folder."""
    from ragtune.workspace import Workspace

    ws = Workspace.init(folder, force=force)
    _console().print(f"Created workspace in {ws.root}\n  settings: {ws.root / 'ragtune.toml'}\n  next: ragtune ingest PATH")


@app.command()
def ingest(paths: Annotated[Optional[list[Path]], typer.Argument(help="Files or folders. None: refresh everything ingested before.", show_default=False)] = None,
           include: Annotated[Optional[list[str]], typer.Option("--include", help="Glob of files to take from folders (repeatable).", show_default=False)] = None,
           exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Glob of files to skip (repeatable, added to \\[ingest] exclude).", show_default=False)] = None,
           ray: Annotated[Optional[bool], typer.Option("--ray/--local", help="Load, chunk and embed on a Ray cluster's workers / in this process (default: \\[ingest] engine).", show_default=False)] = None,
           ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="The Ray cluster (implies --ray): auto, local, HOST:PORT or ray://HOST:PORT (default: \\[ingest] ray_address).", show_default=False)] = None,
           ray_actors: Annotated[Optional[int], typer.Option("--ray-actors", help="Embedding actors on the cluster (implies --ray); 0 = one per CPU (default: \\[ingest] ray_actors).", show_default=False)] = None,
           workspace: WorkspaceOpt = None) -> None:
    """Load, chunk, embed and index files; only new or changed files are processed."""
    ws = _workspace(workspace)
    if include or exclude:
        ws.config = ws.config.override("ingest", include=include or None,
                                       exclude=(ws.config.ingest.exclude + exclude) if exclude else None)
    if ray is not None or ray_address is not None or ray_actors is not None:
        engine = "local" if ray is False else "ray"
        ws.config = ws.config.override("ingest", engine=engine, ray_address=ray_address, ray_actors=ray_actors)
    with RichProgress() as progress:
        report = ws.ingest(paths, progress=progress)
    _print_report(report)
    if report.errors:
        raise typer.Exit(1)


@app.command()
def search(query: Annotated[str, typer.Argument(help="What to look for.")],
           k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="Number of results (default: [retrieve] k).", show_default=False)] = None,
           mode: ModeOpt = None,
           filter: Annotated[Optional[list[str]], typer.Option("--filter", "-f", help="KEY=VALUE on source, doc_id, title, heading, page or meta.FIELD; * is a wildcard (repeatable).", show_default=False)] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
           workspace: WorkspaceOpt = None) -> None:
    """Search the index and print ranked chunks with their sources."""
    import time

    ws = _workspace(workspace)
    t0 = time.perf_counter()
    hits = ws.search(query, k=k, mode=mode, filters=filter)
    ms = (time.perf_counter() - t0) * 1000
    if as_json:
        print(json.dumps({"query": query, "mode": mode or ws.config.retrieve.mode, "ms": round(ms, 2),
                          "hits": [h.to_dict() for h in hits]}, indent=2, ensure_ascii=False))
        return
    print_hits(query, hits, _console())


def print_hits(query: str, hits, console) -> None:
    from rich.markup import escape

    console.print(f"[bold]{escape(query)}[/bold]")
    if not hits:
        console.print("  no results")
    for h in hits:
        where = " › ".join(p for p in (h.source, h.heading) if p)
        page = f" p.{h.page}" if h.page else ""
        snippet = " ".join(h.text.split())
        snippet = snippet[:240] + ("…" if len(snippet) > 240 else "")
        console.print(f"  [bold cyan]{h.rank}[/] [dim]{h.score:.4f}[/] [green]{escape(where)}[/]{page} [dim](chars {h.start}-{h.end})[/]")
        console.print(f"     {escape(snippet)}")


GenOpt = Annotated[Optional[str], typer.Option("--generator", "-g", help="llamacpp | transformers | openai (default: [generate] backend).", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Model for the generator: smollm2, a .gguf file, a HF folder or an endpoint's model name.", show_default=False)]
FilterOpt = Annotated[Optional[list[str]], typer.Option("--filter", "-f", help="KEY=VALUE on source, doc_id, title, heading, page or meta.FIELD (repeatable).", show_default=False)]


def _rag_workspace(workspace, generator, model):
    ws = _workspace(workspace)
    if generator or model:
        ws.config = ws.config.override("generate", backend=generator, model=model)
    return ws


@app.command()
def ask(question: Annotated[str, typer.Argument(help="The question.")],
        k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="Chunks retrieved (default: [retrieve] k).", show_default=False)] = None,
        mode: ModeOpt = None, filter: FilterOpt = None, generator: GenOpt = None, model: ModelOpt = None,
        stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
        show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the exact prompt sent to the model.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the whole Answer as JSON.")] = False,
        workspace: WorkspaceOpt = None) -> None:
    """Answer a question from the indexed documents, citing its sources."""
    ws = _rag_workspace(workspace, generator, model)
    answer = _answer(ws.stream(question, k=k, mode=mode, filters=filter), stream and not as_json)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    print_answer(answer, _console(), show_prompt, printed=stream)


@app.command()
def agent(question: Annotated[str, typer.Argument(help="The question.")],
          show_steps: Annotated[bool, typer.Option("--show-steps", help="Print every step: the exact prompt's size, the model's reply, the tool call and its result.")] = False,
          show_prompt: Annotated[bool, typer.Option("--show-prompt", help="With --show-steps: print each step's exact prompt.")] = False,
          max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Most model calls (default: [agent] max_steps).", show_default=False)] = None,
          generator: GenOpt = None, model: ModelOpt = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the whole Answer, steps included, as JSON.")] = False,
          workspace: WorkspaceOpt = None) -> None:
    """Answer with tools: the model calls search, read, calculate, today (and your [agent] tools) until it answers."""
    from ragtune.rag.chain import require_question

    require_question(question)
    ws = _rag_workspace(workspace, generator, model)
    if max_steps is not None:
        ws.config = ws.config.override("agent", max_steps=max_steps)
    answer = ws.agent().run(question)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    print_steps(answer, _console(), show_steps, show_prompt)


def print_steps(answer, console, show_steps: bool, show_prompt: bool) -> None:
    """An agent's answer: its steps (with ``show_steps``), the answer, the cited sources, the cost."""
    from rich.markup import escape

    for st in answer.steps if show_steps else []:
        console.rule(f"step {st.number} · {st.prompt_tokens} prompt tokens · {st.seconds:.2f} s")
        if show_prompt:
            console.print(escape(st.prompt))
            console.rule(style="dim")
        console.print(f"[bold]model[/] {escape(st.output.strip())}")
        if st.observation is not None:
            label = {"parse": "[red]invalid[/]", "tool": "[red]tool error[/]"}.get(st.error, f"[cyan]{escape(st.tool or '')}[/] →")
            console.print(f"{label} {escape(st.observation[:600])}")
    if show_steps:
        console.rule()
    console.print(escape(answer.text) if answer.text else "[yellow](no answer: the step budget ran out)[/]")
    for s in answer.sources:
        if s.number in answer.citations:
            h = s.hit
            where = " › ".join(p for p in (h.source, h.heading) if p)
            console.print(f"  [cyan][{s.number}][/] [green]{escape(where)}[/]  [dim]{escape(' '.join(h.text.split())[:120])}…[/]")
    u = answer.usage
    ended = {"answer": "answered", "repeat": "a call was repeated: answered"}.get(answer.stopped, "stopped by the step budget")
    console.print(f"[dim]{answer.generator} · {u['steps']} steps, {u['tool_calls']} tool calls, {u['invalid_actions']} invalid · "
                  f"{u['prompt_tokens']} prompt + {u['completion_tokens']} reply tokens · {answer.timings['total_s']:.2f} s · {ended}[/]")


def _answer(s, stream: bool):
    """Read an ``AnswerStream`` to its end (printing the text as it comes with ``stream``); the ``Answer``."""
    for piece in s:
        if stream:
            print(piece, end="", flush=True)
    if stream and not s.answer.abstained:
        print()
    return s.answer


def print_answer(answer, console, show_prompt: bool = False, printed: bool = False) -> None:
    from rich.markup import escape

    if show_prompt and answer.prompt:
        console.rule("prompt")
        console.print(escape(answer.prompt))
        console.rule()
    if not printed or answer.abstained:
        console.print(escape(answer.text))
    numbers = answer.citations or [s.number for s in answer.sources]
    label = {"model": "Sources", "overlap": "Sources (matched by shared words; the model cited none)"}[answer.citation_method]
    if answer.sources:
        console.print(f"\n[bold]{label if answer.citations else 'Retrieved (none cited)'}[/]")
    for s in answer.sources:
        if s.number in numbers:
            h = s.hit
            where = " › ".join(p for p in (h.source, h.heading) if p) + (f" p.{h.page}" if h.page else "")
            snippet = " ".join(h.text.split())[:160]
            console.print(f"  [cyan][{s.number}][/] [green]{escape(where)}[/]\n      [dim]{escape(snippet)}…[/]")
    if answer.dropped:
        console.print(f"[dim]{len(answer.dropped)} retrieved chunk(s) left out to fit [rag] context_tokens = {answer.usage.get('context_budget')}[/]")
    t, u = answer.timings, answer.usage
    if not answer.abstained:
        console.print(f"[dim]{answer.generator} · {u.get('prompt_tokens')} prompt + {u.get('completion_tokens')} answer tokens · "
                      f"retrieve {t['retrieve_s'] * 1000:.0f} ms · first token {t['first_token_s']:.2f} s · total {t['total_s']:.2f} s[/]")


@app.command()
def chat(k: Annotated[Optional[int], typer.Option("-k", "--top-k", help="Chunks retrieved per turn.", show_default=False)] = None,
         mode: ModeOpt = None, generator: GenOpt = None, model: ModelOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Multi-turn questions; follow-ups are rewritten into standalone queries before retrieval. Ctrl-D ends."""
    from ragtune.rag.chain import Conversation

    conversation = Conversation(_rag_workspace(workspace, generator, model).chain())
    c = _console()
    c.print("[dim]Ask a question (empty line or Ctrl-D to end).[/]")
    while question := _read("you> "):
        s = conversation.stream(question, k=k, mode=mode)
        if s.query != question:
            c.print(f"[dim]searching for: {s.query}[/]")
        print_answer(_answer(s, stream=True), c, printed=True)


def _read(prompt: str) -> str:
    """A line typed by the user; "" at the end of input."""
    try:
        return input(prompt).strip()
    except EOFError:
        return ""


@index_app.command("stats")
def index_stats(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
                workspace: WorkspaceOpt = None) -> None:
    """Documents, chunks, embedding model and index version."""
    from dataclasses import asdict

    stats = _workspace(workspace).stats()
    if as_json:
        print(json.dumps(asdict(stats), indent=2))
        return
    c = _console()
    for key, value in asdict(stats).items():
        c.print(f"{key.replace('_', ' '):>15}: {value}")


@index_app.command("rebuild")
def index_rebuild(workspace: WorkspaceOpt = None) -> None:
    """Drop the index and ingest every recorded path again with the current settings."""
    ws = _workspace(workspace)
    with RichProgress() as progress:
        report = ws.rebuild(progress=progress)
    _print_report(report)


@app.command()
def embedders() -> None:
    """List the embedding models in the registry and the backends that run them."""
    from ragtune.embed import BACKENDS, EMBEDDERS

    c = _console()
    for spec in EMBEDDERS.values():
        c.print(f"[bold]{spec.name}[/]  {spec.description}")
    c.print(f"backends: {', '.join(BACKENDS)} (set [embed] backend); any local sentence-transformers folder works as [embed] model")


@eval_app.command("retrieval")
def eval_retrieval(beir: Annotated[Path, typer.Option("--beir", help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv.")],
                   split: Annotated[str, typer.Option("--split", help="Which qrels file to score.")] = "test",
                   mode: ModeOpt = None,
                   k: Annotated[int, typer.Option("-k", help="Documents retrieved per query (Recall@k uses max(k, 100)).")] = 100,
                   json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.", show_default=False)] = None,
                   scratch: Annotated[Optional[Path], typer.Option("--scratch", help="Workspace folder for the corpus index (reused when present).", show_default=False)] = None,
                   workspace: WorkspaceOpt = None) -> None:
    """nDCG@10, Recall@100 and MRR@10 on a BEIR dataset, with ingest and query timings."""
    from ragtune.evaluate.retrieval import evaluate_beir

    with RichProgress() as progress:
        result = evaluate_beir(beir, split=split, mode=mode, k=k, scratch=scratch, workspace=workspace, progress=progress)
    c = _console()
    c.print(f"[bold]{result.dataset}[/] ({result.split}, {result.queries} queries, mode {result.mode}, "
            f"{result.documents} docs in {result.chunks} chunks)")
    for name, value in result.metrics.items():
        c.print(f"  {name:>10}: {value:.4f}")
    t = result.timings
    c.print(f"  ingest {t['ingest_s']:.1f}s · query p50 {t['query_p50_ms']:.1f} ms · p95 {t['query_p95_ms']:.1f} ms · p99 {t['query_p99_ms']:.1f} ms")
    if json_out:
        _write_json(json_out, result.to_dict(), c)


@eval_app.command("qa")
def eval_qa(qa: Annotated[Path, typer.Option("--qa", help="QA JSONL file (id, question, answers[, doc_ids, context, metadata]).")],
            arm: Annotated[str, typer.Option("--arm", help="rag | closed-book | retrieval (evidence only, no generation) | agent (tool-using, steps kept)")] = "rag",
            k: Annotated[Optional[int], typer.Option("-k", help="Chunks retrieved per question (default: [retrieve] k).", show_default=False)] = None,
            mode: ModeOpt = None, generator: GenOpt = None, model: ModelOpt = None,
            limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions.", show_default=False)] = None,
            json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and every prediction (prompt, retrieved ids, answer) here.", show_default=False)] = None,
            track: Annotated[bool, typer.Option("--track/--no-track", help="Record the run in .ragtune/runs/ and MLflow.")] = True,
            judge: Annotated[bool, typer.Option("--judge", help="Also grade each answer with the generator as an LLM judge (strict verdicts; parse failures reported).")] = False,
            workspace: WorkspaceOpt = None) -> None:
    """Answer a question set and score EM/F1/contains, evidence recall, citations, groundedness, latency."""
    from ragtune.evaluate.qa import load_qa
    from ragtune.evaluate.qa_eval import evaluate_qa, workspace_answerer
    from ragtune.experiment.tracking import track_eval

    items = load_qa(qa)[:limit]
    ws = _rag_workspace(workspace, generator, model)
    ws.config = ws.config.override("retrieve", k=k, mode=mode)
    with RichProgress() as progress:
        result = evaluate_qa(items, workspace_answerer(ws, arm), progress=progress, judge=ws.generator if judge else None)
    c = _console()
    c.print(f"[bold]{qa.name}[/] · {result.questions} questions · arm {arm}" + (f" · {result.generator}" if result.generator else ""))
    _print_metrics(result.metrics, c)
    if track:
        run = track_eval(ws, qa, result, limit)
        c.print(f"  run {run.id} · {run.path}")
    if json_out:
        _write_json(json_out, result.to_dict(), c)


def _write_json(path: Path, data, c) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    c.print(f"  wrote {path}")


def _print_metrics(metrics: dict, c) -> None:
    for name, value in metrics.items():
        c.print(f"  {name:>24}: {value:.4f}" if isinstance(value, float) else f"  {name:>24}: {value}")


@experiment_app.command("run")
def experiment_run(sweep_file: Annotated[Path, typer.Argument(help="Sweep TOML: qa, arm, [base], [grid] and/or [[runs]] (see docs/evaluate.md).")],
                   force: Annotated[bool, typer.Option("--force", help="Rerun runs that are already finished.")] = False,
                   dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and their ids; run nothing.")] = False,
                   workspace: WorkspaceOpt = None) -> None:
    """Evaluate every configuration of a sweep; finished runs are skipped, so an interrupted sweep resumes."""
    from ragtune.experiment.sweep import load_sweep, plan, run_sweep

    ws, sweep = _workspace(workspace), load_sweep(sweep_file)
    c = _console()
    if dry_run:
        for p in plan(ws, sweep):
            c.print(f"{p.id}  {p.name}")
        return
    with RichProgress() as progress:
        result = run_sweep(ws, sweep, force=force, progress=progress, log=progress.log)
    _print_runs([o.run for o in result.outcomes], c)


@runs_app.command("list")
def runs_list(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
              workspace: WorkspaceOpt = None) -> None:
    """Every run in the workspace, oldest first, with its headline metrics."""
    from ragtune.experiment.runs import RUNS_DIR, iter_runs

    runs = list(iter_runs(_workspace(workspace).state_dir / RUNS_DIR))
    if as_json:
        print(json.dumps([{"id": r.id, "name": r.name, "arm": r.info.get("arm"), "started": r.info.get("started"),
                           "finished": r.finished, "metrics": r.metrics, "path": str(r.path)} for r in runs], indent=2))
        return
    _print_runs(runs, _console())


HEADLINE = ("f1", "contains", "judge_score", "recall@k", "ndcg@k", "total_p50_ms")


def _print_runs(runs, c) -> None:
    from rich.table import Table

    if not runs:
        c.print("no runs yet: `ragtune eval qa --qa FILE` or `ragtune experiment run SWEEP.toml`")
        return
    shown = [m for m in HEADLINE if any((r.metrics or {}).get(m) is not None for r in runs)]
    sweeps, arms = {r.info.get("sweep") for r in runs}, {r.info.get("arm") for r in runs}
    title = " · ".join(filter(None, [f"sweep {next(iter(sweeps))}" if len(sweeps) == 1 and None not in sweeps else "",
                                     f"arm {next(iter(arms))}" if len(arms) == 1 else ""]))
    table = Table("id", "name", *([] if len(arms) == 1 else ["arm"]), *shown, title=title or None)
    table.columns[0].no_wrap = True
    for r in runs:
        name = r.name.removeprefix(f"{r.info['sweep']}:") if len(sweeps) == 1 and r.info.get("sweep") else r.name
        values = [_fmt((r.metrics or {}).get(m)) if r.finished else "unfinished" for m in shown]
        table.add_row(r.id, name, *([] if len(arms) == 1 else [r.info.get("arm", "")]), *values)
    c.print(table)


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) and abs(value) >= 10 else f"{value:.3f}" if isinstance(value, float) else str(value)


@runs_app.command("compare")
def runs_compare(a: Annotated[str, typer.Argument(help="Baseline run: id, id prefix, name or folder.")],
                 b: Annotated[str, typer.Argument(help="Run compared with it.")],
                 workspace: WorkspaceOpt = None) -> None:
    """Two runs side by side: metrics with deltas, the settings that differ, per-question wins and losses."""
    from rich.table import Table

    from ragtune.experiment.compare import compare_runs
    from ragtune.experiment.runs import RUNS_DIR, find_run

    runs_dir = _workspace(workspace).state_dir / RUNS_DIR
    d = compare_runs(find_run(runs_dir, a), find_run(runs_dir, b))
    c = _console()
    table = Table("metric", d.base.id, d.other.id, "delta")
    for name, va, vb, delta in d.metrics:
        table.add_row(name, _fmt(va), _fmt(vb), "–" if delta is None else f"{delta:+.4f}")
    c.print(table)
    for key, va, vb in d.settings:
        c.print(f"  {key}: {va!r} → {vb!r}")
    q = d.questions
    c.print(f"{len(q.diffs)} questions scored by {d.kind}: {d.other.id} wins {len(q.wins)}, loses {len(q.losses)}, ties {q.ties}")


@app.command()
def report(runs: Annotated[Optional[list[str]], typer.Argument(help="Runs (id, id prefix, name or folder); the first is the baseline.", show_default=False)] = None,
           sweep: Annotated[Optional[str], typer.Option("--sweep", help="Also every finished run of this sweep (by name), in the order they ran.", show_default=False)] = None,
           compare_id: Annotated[Optional[str], typer.Option("--compare", help="The page of a `ragtune compare` run (its id): recommendation, arms, freshness, forgetting, then its four runs.", show_default=False)] = None,
           out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (self-contained, works offline).")] = Path("report.html"),
           workspace: WorkspaceOpt = None) -> None:
    """One HTML file: metrics table, quality-vs-latency chart (Pareto front), wins/losses, worst failures."""
    from ragtune.experiment.report import comparison_section, write_report
    from ragtune.experiment.runs import RUNS_DIR, find_run, iter_runs

    ws = _workspace(workspace)
    runs_dir = ws.state_dir / RUNS_DIR
    chosen = [find_run(runs_dir, r) for r in runs or []]
    top = ""
    if compare_id:
        from ragtune.experiment.rag_vs_ft import arm_figures, load_comparison

        state = load_comparison(ws, compare_id)
        figures = arm_figures(state)
        arms = [find_run(runs_dir, f["run"]) for f in figures.values()]
        top = comparison_section(state, figures, arms)
        chosen = arms + [r for r in chosen if r.id not in {a.id for a in arms}]
    if sweep:
        members = [r for r in iter_runs(runs_dir) if r.info.get("sweep") == sweep and r.finished]
        if not members:
            from ragtune.errors import WorkspaceError

            raise WorkspaceError(f"no finished runs of sweep {sweep!r}; see `ragtune runs list`")
        chosen += [r for r in members if r.id not in {c.id for c in chosen}]
    path = write_report(chosen, out, top=top)
    _console().print(f"wrote {path} ({len(chosen)} runs)")


@data_app.command("import-squad")
def data_import_squad(source: Annotated[Path, typer.Argument(help="SQuAD v1.1 JSON, or a folder with questions.jsonl.gz + contexts.jsonl.gz.")],
                      out: Annotated[Path, typer.Option("--out", "-o", help="QA JSONL to write.")],
                      contexts: Annotated[Optional[Path], typer.Option("--contexts", help="Split folder only: also write its paragraphs as ingestable JSONL here.", show_default=False)] = None) -> None:
    """Convert SQuAD into the QA JSONL format (gold doc ids = paragraph ids)."""
    from ragtune.evaluate.qa import from_squad, squad_contexts, write_qa

    n = write_qa(from_squad(source), out)
    _console().print(f"wrote {n} questions to {out}")
    if contexts:
        _console().print(f"wrote {squad_contexts(source, contexts)} paragraphs to {contexts} (ingest it: ragtune ingest {contexts})")


@data_app.command("import-beir")
def data_import_beir(folder: Annotated[Path, typer.Argument(help="BEIR folder: corpus.jsonl[.gz], queries.jsonl, qrels/SPLIT.tsv.")],
                     out: Annotated[Path, typer.Option("--out", "-o", help="QA JSONL to write (retrieval-only questions).")],
                     split: Annotated[str, typer.Option("--split", help="Which qrels file.")] = "test") -> None:
    """Convert a BEIR set's queries into retrieval-only questions (gold doc ids from the qrels; ingest corpus.jsonl)."""
    from ragtune.evaluate.qa import from_beir, write_qa

    n = write_qa(from_beir(folder, split), out)
    _console().print(f"wrote {n} retrieval-only questions to {out}; next: ragtune ingest {folder}/corpus.jsonl, "
                     f"then ragtune eval qa --arm retrieval --qa {out}")


@data_app.command("synth-qa")
def data_synth_qa(out: Annotated[Path, typer.Option("--out", "-o", help="QA JSONL to write.")],
                  n: Annotated[int, typer.Option("-n", help="Questions wanted (at most 3n chunks are tried).")] = 20,
                  docs: Annotated[Optional[list[Path]], typer.Option("--docs", help="Ingest these files/folders first (else: what is already indexed).", show_default=False)] = None,
                  seed: Annotated[int, typer.Option("--seed", help="Which chunks are sampled.")] = 0,
                  generator: GenOpt = None, model: ModelOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Write question/answer pairs from indexed chunks with a generator; each tied to its chunk. Review them before trusting them."""
    from ragtune.evaluate.qa import write_qa
    from ragtune.evaluate.synth import synth_qa

    ws = _rag_workspace(workspace, generator, model)
    with RichProgress() as progress:
        if docs:
            ws.ingest(docs, progress=progress)
        items, stats = synth_qa(ws.store, ws.generator, n, seed=seed, progress=progress)
    write_qa(items, out)
    c = _console()
    c.print(f"wrote {len(items)} questions to {out} ({ws.generator.name}) · " + " · ".join(f"{k} {v}" for k, v in stats.items()))
    if len(items) < n:
        c.print(f"[yellow]fewer than {n}[/]: the generator's pairs were rejected (see the counts); a stronger model "
                "(--generator openai) or more documents help")


@data_app.command("import-hh")
def data_import_hh(source: Annotated[Path, typer.Argument(help="Anthropic HH-RLHF JSONL[.gz] with chosen/rejected texts.")],
                   out: Annotated[Path, typer.Option("--out", "-o", help="Preference pairs JSONL to write (conversational, explicit prompt).")]) -> None:
    """Convert HH-RLHF's "Human: ... Assistant: ..." texts into conversational pairs (prompt, chosen, rejected)."""
    from ragtune.train.preferences import import_hh, write_jsonl

    rows, stats = import_hh(source)
    write_jsonl(rows, out)
    _console().print(f"wrote {stats['written']} pairs to {out} from {stats['read']} rows; skipped: {stats['parted_early']} parted "
                     f"before the last answer, {stats['same_answer']} with the same answer, {stats['empty_answer']} with an "
                     f"empty answer, {stats['not_hh']} not in HH's format")


@data_app.command("validate")
def data_validate(path: Annotated[Path, typer.Argument(help="QA JSONL file, demonstrations (--task sft) or preferences (--task reward|dpo|kto).")],
                  task: Annotated[str, typer.Option("--task", help="qa | sft | reward | dpo | kto")] = "qa",
                  prompt_field: Annotated[Optional[str], typer.Option("--prompt-field", help="sft: field holding the prompt (e.g. question).", show_default=False)] = None,
                  completion_field: Annotated[Optional[str], typer.Option("--completion-field", help="sft: field holding the desired output (e.g. answer).", show_default=False)] = None,
                  workspace: WorkspaceOpt = None) -> None:
    """Check a data file; problems are listed by line. With --task sft: formats, roles, duplicates,
    train/eval overlap and lengths against [train] max_length with the [train] base model's tokenizer.
    With --task reward|dpo|kto: preference rows (missing fields, chosen == rejected, empty answers,
    mixed kinds, implicit prompts that share nothing, duplicates) and the same length check."""
    if task == "qa":
        from ragtune.evaluate.qa import load_qa

        items = load_qa(path)
        _console().print(f"{path}: {len(items)} questions, {sum(bool(i.doc_ids) for i in items)} with gold doc ids — OK")
        return
    if task not in ("sft", "reward", "dpo", "kto"):
        raise typer.BadParameter(f"--task {task!r}: choose qa, sft, reward, dpo or kto")
    _console().print(_validate_training_data(_workspace(workspace), path, task, prompt_field, completion_field))


def _validate_training_data(ws, path: Path, task: str, prompt_field: Optional[str] = None,
                            completion_field: Optional[str] = None) -> str:
    """Everything `finetune` checks before training (raises DatasetError); an OK line."""
    from ragtune.train.finetune import prepare, prepare_preferences

    cfg = ws.config.train
    prepared = (prepare(ws.root, path, cfg, prompt_field, completion_field) if task == "sft"  # what `finetune` checks, all of it
                else prepare_preferences(ws.root, path, cfg, task))
    what = "examples" if task == "sft" else type(prepared.examples["train"][0]).__name__.lower() + "s"
    return (f"{path}: {len(prepared.train)} train + {len(prepared.eval)} eval {what} (\\[train] eval_fraction "
            f"{cfg.eval_fraction}), all within max_length {cfg.max_length} for {cfg.base} — OK")


@data_app.command("qa-to-sft")
def data_qa_to_sft(qa: Annotated[Path, typer.Argument(help="QA JSONL file.")],
                   out: Annotated[Path, typer.Option("--out", "-o", help="Demonstrations JSONL to write (messages format).")],
                   k: Annotated[int, typer.Option("-k", help="Put the top-k retrieved chunks in each prompt, as the RAG chain does (RAFT-style); 0 = question only.")] = 0,
                   system: Annotated[Optional[str], typer.Option("--system", help="System prompt.", show_default=False)] = None,
                   workspace: WorkspaceOpt = None) -> None:
    """Turn a question set into demonstrations: question (with retrieved context when -k > 0) -> first gold answer."""
    from ragtune.evaluate.qa import load_qa
    from ragtune.train.data import from_qa, write_examples

    c = _console()
    chain = _workspace(workspace).chain() if k else None
    n = write_examples(from_qa(load_qa(qa), chain, k, system, log=c.print), out)
    c.print(f"wrote {n} demonstrations to {out}")


@data_app.command("traces-to-sft")
def data_traces_to_sft(run: Annotated[str, typer.Argument(help="An `eval qa --arm agent` run: id, prefix, name or folder.")],
                       out: Annotated[Path, typer.Option("--out", "-o", help="Demonstrations JSONL to write (TRL messages with tool_calls).")],
                       min_f1: Annotated[float, typer.Option("--min-f1", help="Keep answers scoring at least this F1 against the reference.")] = 1.0,
                       workspace: WorkspaceOpt = None) -> None:
    """Turn an agent run's successful traces (answered, every reply valid, no tool error, F1 >= --min-f1) into SFT demonstrations."""
    from ragtune.agent.traces import successful_traces
    from ragtune.experiment.runs import RUNS_DIR, find_run
    from ragtune.train.data import write_examples

    r = find_run(_workspace(workspace).state_dir / RUNS_DIR, run)
    if r.info.get("arm") != "agent":
        raise ConfigError(f"run {r.id} is a {r.info.get('arm')!r} run; traces come from `ragtune eval qa --arm agent` runs")
    export = successful_traces(r.predictions, min_f1)
    c = _console()
    if not export.examples:
        raise ConfigError(f"none of the {export.seen} traces of run {r.id} qualifies ("
                          + ", ".join(f"{n} {why}" for why, n in export.left_out.items()) + "); lower --min-f1?")
    n = write_examples(export.examples, out)
    skipped = ", ".join(f"{n} {why}" for why, n in export.left_out.items())
    c.print(f"wrote {n} of {export.seen} traces to {out}" + (f" (left out: {skipped})" if skipped else ""))


BaseOpt = Annotated[Optional[str], typer.Option("--base", help="smollm2 or a local Hugging Face model folder ([train] base).", show_default=False)]
MethodOpt = Annotated[Optional[str], typer.Option("--method", help="lora | full ([train] method).", show_default=False)]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", show_default=False)]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default=False)]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help="cosine | linear | constant.", show_default=False)]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", show_default=False)]
AccumOpt = Annotated[Optional[int], typer.Option("--grad-accum", show_default=False)]
MaxLenOpt = Annotated[Optional[int], typer.Option("--max-length", help="Most tokens per example.", show_default=False)]
LoraROpt = Annotated[Optional[int], typer.Option("--lora-r", show_default=False)]
LoraAlphaOpt = Annotated[Optional[int], typer.Option("--lora-alpha", show_default=False)]
EvalFracOpt = Annotated[Optional[float], typer.Option("--eval-fraction", help="Share held out for evaluation.", show_default=False)]
EarlyOpt = Annotated[Optional[int], typer.Option("--early-stopping", help="Epochs without eval improvement before stopping; 0 = off.", show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of --name from its last checkpoint.")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="Discard an interrupted run of --name and start again.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a registered model of the same name.")]


def _train_config(ws, ctx: typer.Context):
    """[train] with the command's flags on top (each flag is named as its setting)."""
    from ragtune.config import TrainConfig

    return ws.config.override("train", **{f.name: ctx.params[f.name] for f in fields(TrainConfig) if f.name in ctx.params}).train


@finetune_app.command("sft")
def finetune_sft(ctx: typer.Context,
                 data: Annotated[Path, typer.Option("--data", help="Demonstrations: JSONL with messages, or prompt/completion (or --prompt-field/--completion-field).")],
                 name: Annotated[str, typer.Option("--name", help="Register the result under this name (then: ragtune ask --model NAME).")],
                 base: BaseOpt = None, method: MethodOpt = None, epochs: EpochsOpt = None, learning_rate: LrOpt = None,
                 schedule: ScheduleOpt = None, batch_size: BatchOpt = None, grad_accum: AccumOpt = None, max_length: MaxLenOpt = None,
                 lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None, eval_fraction: EvalFracOpt = None,
                 early_stopping: EarlyOpt = None, seed: SeedOpt = None,
                 prompt_field: Annotated[Optional[str], typer.Option("--prompt-field", help="Field holding the prompt in other datasets (e.g. question).", show_default=False)] = None,
                 completion_field: Annotated[Optional[str], typer.Option("--completion-field", help="Field holding the desired output (e.g. answer).", show_default=False)] = None,
                 system: Annotated[Optional[str], typer.Option("--system", help="System prompt added to every example.", show_default=False)] = None,
                 resume: ResumeOpt = False, restart: RestartOpt = False, overwrite: OverwriteOpt = False,
                 workspace: WorkspaceOpt = None) -> None:
    """Supervised fine-tuning (LoRA or full) on demonstrations; the result is registered as --name.

    Every other setting is in ragtune.toml [train]. Under torchrun/accelerate launch each process
    trains on its share of every batch (gloo on CPU, nccl on GPUs)."""
    from ragtune.experiment.tracking import training_tracker
    from ragtune.train.distributed import init_distributed
    from ragtune.train.finetune import finetune

    ws = _workspace(workspace)
    cfg = _train_config(ws, ctx)
    lead = init_distributed() == 0  # under torchrun only rank 0 draws, logs and prints
    with RichProgress() as progress:
        folder = finetune(ws.root, name, data, cfg, resume=resume, restart=restart, overwrite=overwrite, prompt_field=prompt_field,
                          completion_field=completion_field, system=system, on_step=progress.on_step if lead else None,
                          track=training_tracker(ws), log=progress.log if lead else (lambda line: None))
    if lead:
        _print_card(folder.name, ws, _console())


@finetune_app.command("reward")
def finetune_reward(ctx: typer.Context,
                    data: Annotated[Path, typer.Option("--data", help="Preferences: pairs (prompt/chosen/rejected, or chosen/rejected), rankings (prompt/completions[/scores]) or likes/dislikes (prompt/completion/label).")],
                    name: Annotated[str, typer.Option("--name", help="Register the reward model under this name (then: ragtune eval reward --model NAME).")],
                    base: BaseOpt = None, method: MethodOpt = None, epochs: EpochsOpt = None, learning_rate: LrOpt = None,
                    schedule: ScheduleOpt = None, batch_size: BatchOpt = None, grad_accum: AccumOpt = None,
                    max_length: MaxLenOpt = None, lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None,
                    eval_fraction: EvalFracOpt = None, seed: SeedOpt = None,
                    resume: ResumeOpt = False, restart: RestartOpt = False, overwrite: OverwriteOpt = False,
                    workspace: WorkspaceOpt = None) -> None:
    """Train a reward model (the base with a scalar head; Bradley-Terry on pairs, cross-entropy on likes/dislikes).

    Held-out pairs (split by prompt) are scored before and after: accuracy with its 95% interval, and
    the accuracy that "the longer answer wins" reaches on the same pairs."""
    from ragtune.experiment.tracking import training_tracker
    from ragtune.train.distributed import init_distributed
    from ragtune.train.finetune import finetune_reward as train_reward

    ws = _workspace(workspace)
    lead = init_distributed() == 0
    with RichProgress() as progress:
        folder = train_reward(ws.root, name, data, _train_config(ws, ctx), resume=resume, restart=restart, overwrite=overwrite,
                              on_step=progress.on_step if lead else None, track=training_tracker(ws),
                              log=progress.log if lead else (lambda line: None))
    if lead:
        _print_card(folder.name, ws, _console())


def _finetune_direct(ctx: typer.Context, loss: str, data: Path, name: str, beta: Optional[float], reward: Optional[str],
                     judge: Optional[str], resume: bool, restart: bool, overwrite: bool, workspace: Optional[Path]) -> None:
    from ragtune.experiment.tracking import training_tracker
    from ragtune.train.distributed import init_distributed
    from ragtune.train.finetune import finetune_direct

    ws = _workspace(workspace)
    pcfg = ws.config.override("preference", beta=beta).preference
    lead = init_distributed() == 0
    with RichProgress() as progress:
        folder = finetune_direct(ws.root, name, data, _train_config(ws, ctx), pcfg, loss, ws.config.rl, reward, judge, resume=resume, restart=restart,
                                 overwrite=overwrite, on_step=progress.on_step if lead else None, track=training_tracker(ws),
                                 log=progress.log if lead else (lambda line: None))
    if lead:
        _print_card(folder.name, ws, _console())


BetaOpt = Annotated[Optional[float], typer.Option("--beta", help="Pull towards the base model: higher = stay closer ([preference] beta).", show_default=False)]
RewardOpt = Annotated[Optional[str], typer.Option("--reward", help="A registered reward model that scores the held-out answers before and after.", show_default=False)]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge", help="A second registered reward model (trained on other data) that judges tuned vs base answers: the win rate.", show_default=False)]


@finetune_app.command("dpo")
def finetune_dpo(ctx: typer.Context,
                 data: Annotated[Path, typer.Option("--data", help="Preference pairs (prompt/chosen/rejected, or chosen/rejected) or rankings (prompt/completions[/scores]).")],
                 name: Annotated[str, typer.Option("--name", help="Register the tuned generator under this name (then: ragtune ask --model NAME).")],
                 beta: BetaOpt = None, reward: RewardOpt = None, judge: JudgeOpt = None, base: BaseOpt = None, method: MethodOpt = None, epochs: EpochsOpt = None,
                 learning_rate: LrOpt = None, schedule: ScheduleOpt = None, batch_size: BatchOpt = None,
                 grad_accum: AccumOpt = None, max_length: MaxLenOpt = None, lora_r: LoraROpt = None,
                 lora_alpha: LoraAlphaOpt = None, eval_fraction: EvalFracOpt = None, seed: SeedOpt = None,
                 resume: ResumeOpt = False, restart: RestartOpt = False, overwrite: OverwriteOpt = False,
                 workspace: WorkspaceOpt = None) -> None:
    """Direct preference optimisation: the generator learns from pairs without a reward model.

    The base model's log-probs are computed once before training and cached (no second model in
    memory). After training: held-out pairs ordered by the implicit reward (with its 95% interval),
    and the forgetting checks against the base. --base takes a registered sft model too."""
    _finetune_direct(ctx, "dpo", data, name, beta, reward, judge, resume, restart, overwrite, workspace)


@finetune_app.command("kto")
def finetune_kto(ctx: typer.Context,
                 data: Annotated[Path, typer.Option("--data", help="Likes/dislikes (prompt/completion/label), or pairs (each gives one liked and one disliked answer).")],
                 name: Annotated[str, typer.Option("--name", help="Register the tuned generator under this name (then: ragtune ask --model NAME).")],
                 beta: BetaOpt = None, reward: RewardOpt = None, judge: JudgeOpt = None, base: BaseOpt = None, method: MethodOpt = None, epochs: EpochsOpt = None,
                 learning_rate: LrOpt = None, schedule: ScheduleOpt = None, batch_size: BatchOpt = None,
                 grad_accum: AccumOpt = None, max_length: MaxLenOpt = None, lora_r: LoraROpt = None,
                 lora_alpha: LoraAlphaOpt = None, eval_fraction: EvalFracOpt = None, seed: SeedOpt = None,
                 resume: ResumeOpt = False, restart: RestartOpt = False, overwrite: OverwriteOpt = False,
                 workspace: WorkspaceOpt = None) -> None:
    """KTO: the generator learns from single liked or disliked answers (thumbs up/down), no pairs needed.

    Liked/disliked weights are [preference] desirable_weight / undesirable_weight; the base model's
    log-probs are cached as for DPO. Trained from pairs, it is measured on held-out pairs like DPO."""
    _finetune_direct(ctx, "kto", data, name, beta, reward, judge, resume, restart, overwrite, workspace)


@finetune_app.command("rl")
def finetune_rl(ctx: typer.Context,
                prompts: Annotated[Path, typer.Option("--prompts", help="Prompts: JSONL with 'prompt' (string or messages) or 'messages' ending with a user turn; a preference file's prompts work too.")],
                reward: Annotated[str, typer.Option("--reward", help="The registered reward model to maximise (ragtune finetune reward).")],
                name: Annotated[str, typer.Option("--name", help="Register the tuned generator under this name (then: ragtune ask --model NAME).")],
                judge: JudgeOpt = None,
                eval_prompts: Annotated[Optional[Path], typer.Option("--eval-prompts", help="Prompts to check base vs tuned on (none of them trains); default: a [train] eval_fraction split of --prompts.", show_default=False)] = None,
                algorithm: Annotated[Optional[str], typer.Option("--algorithm", help="rloo (default) | grpo ([rl] algorithm).", show_default=False)] = None,
                steps: Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps ([rl] steps).", show_default=False)] = None,
                samples: Annotated[Optional[int], typer.Option("--samples", help="Answers per prompt ([rl] samples).", show_default=False)] = None,
                prompts_per_step: Annotated[Optional[int], typer.Option("--prompts-per-step", show_default=False)] = None,
                max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", show_default=False)] = None,
                kl_coef: Annotated[Optional[float], typer.Option("--kl-coef", help="Weight of the KL to the base ([rl] kl_coef).", show_default=False)] = None,
                length_penalty: Annotated[Optional[float], typer.Option("--length-penalty", help="Reward subtracted per answer token.", show_default=False)] = None,
                base: BaseOpt = None, method: MethodOpt = None, learning_rate: LrOpt = None, max_length: MaxLenOpt = None,
                lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None, eval_fraction: EvalFracOpt = None, seed: SeedOpt = None,
                resume: ResumeOpt = False, restart: RestartOpt = False, overwrite: OverwriteOpt = False,
                workspace: WorkspaceOpt = None) -> None:
    """RL against a reward model: sample answers, score them, move towards the better ones, stay near the base.

    RLOO by default (the KL to the base folded into the reward); GRPO with --algorithm grpo (needs
    --kl-coef > 0). Per step: reward, KL, length, entropy, truncation. After: held-out prompts
    answered by base and tuned (score, KL, length, distinct-2, end-of-turn rate; win rate under
    --judge) and the forgetting checks. The rest is in ragtune.toml [rl] and [train]."""
    from ragtune.experiment.tracking import training_tracker
    from ragtune.train.finetune import finetune_rl as train_rl

    ws = _workspace(workspace)
    rcfg = ws.config.override("rl", algorithm=algorithm, steps=steps, samples=samples, prompts_per_step=prompts_per_step,
                              max_new_tokens=max_new_tokens, kl_coef=kl_coef, length_penalty=length_penalty).rl
    with RichProgress() as progress:
        folder = train_rl(ws.root, name, prompts, _train_config(ws, ctx), rcfg, reward, judge, held_out=eval_prompts, resume=resume, restart=restart,
                          overwrite=overwrite, on_step=progress.on_step, track=training_tracker(ws), log=progress.log)
    _print_card(folder.name, ws, _console())


@eval_app.command("reward")
def eval_reward(data: Annotated[Path, typer.Option("--data", help="Preference pairs or rankings (held out from training).")],
                model: Annotated[str, typer.Option("--model", help="A registered reward model.")],
                json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures (and every reward) here.", show_default=False)] = None,
                workspace: WorkspaceOpt = None) -> None:
    """Pairwise accuracy of a reward model with a bootstrap 95% interval, the mean margin, and the
    accuracy of "the longer answer wins" (overall and on a length-balanced subset), so a reward
    that only measures length shows."""
    from ragtune.train.reward import evaluate_registered

    ws = _workspace(workspace)
    result = evaluate_registered(ws.root, model, data, ws.config.train.max_length, ws.config.train.batch_size)
    c = _console()
    c.print(f"[bold]{model}[/] on {result.pairs} pairs of {data.name}: accuracy {result.accuracy:.3f} "
            f"(95% {result.accuracy_low:.3f}-{result.accuracy_high:.3f}) · longer answer wins {result.length_baseline_accuracy:.3f}")
    _print_metrics(result.metrics(), c)
    if json_out:
        _write_json(json_out, {**result.metrics(), "rewards_chosen": result.rewards_chosen,
                               "rewards_rejected": result.rewards_rejected}, c)


@app.command()
def score(data: Annotated[Path, typer.Argument(help="JSONL rows to score: prompt/completion (strings or messages) or messages ending with the answer.")],
          model: Annotated[str, typer.Option("--model", help="A registered reward model.")],
          out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the rows with their reward here (JSONL).", show_default=False)] = None,
          workspace: WorkspaceOpt = None) -> None:
    """Score answers with a reward model: each row's reward (higher = preferred)."""
    from ragtune.train.preferences import write_jsonl
    from ragtune.train.reward import score_file

    ws = _workspace(workspace)
    rows = score_file(ws.root, model, data, ws.config.train.max_length, ws.config.train.batch_size)
    if out:
        write_jsonl(rows, out)
    c = _console()
    for r in rows[:20] if not out else []:
        c.print(f"{r['reward']:+.4f}  {str(r.get('id', ''))[:24]}")
    c.print(f"{len(rows)} rows · mean reward {sum(r['reward'] for r in rows) / max(len(rows), 1):+.4f}" + (f" · wrote {out}" if out else ""))


@models_app.command("list")
def models_list(workspace: WorkspaceOpt = None) -> None:
    """Registered models with their task (sft, reward, dpo, kto, rl), kind (lora, full), base and headline metric."""
    from rich.table import Table

    from ragtune.models.registry import list_models

    ws = _workspace(workspace)
    cards = list_models(ws.root)
    if not cards:
        _console().print("no models yet: `ragtune finetune sft --data FILE --name NAME`")
        return
    table = Table("name", "task", "kind", "base", "before → after", "created")
    for card in cards:
        m = card.metrics
        key = _HEADLINE.get(card.task, "eval_loss")
        table.add_row(card.name, card.task, card.kind, card.base.get("name", ""),
                      f"{key.replace('_', ' ')} {_fmt(m.get(f'{key}_before'))} → {_fmt(m.get(f'{key}_after'))}", card.created[:19])
    _console().print(table)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="A registered model.")], workspace: WorkspaceOpt = None) -> None:
    """The model card: base and data hashes, training config, metrics, packages."""
    _print_card(name, _workspace(workspace), _console())


def _print_card(name: str, ws, c) -> None:
    from rich.table import Table

    from ragtune.models.registry import load_card

    card = load_card(ws.root, name)
    c.print(f"[bold]{card.name}[/] ({card.task}, {card.kind}) · base {card.base.get('name')} sha256 {card.base.get('sha256', '')[:16]} · "
            f"data sha256 {card.data_sha256[:16]} · {card.train_time_s:.0f}s")
    m = card.metrics
    reward = card.task == "reward"
    table = Table("check", "untrained" if reward else "base", "trained" if reward else "tuned", "change", title_justify="left",
                  title="held-out pairs, before and after training" if reward else "base vs tuned (checks.json has every answer)")
    for key, label, unit in _CHECKS:
        if m.get(f"{key}_after") is not None:
            change = m.get(f"{key}_change")
            table.add_row(label, _fmt(m.get(f"{key}_before")), _fmt(m.get(f"{key}_after")),
                          "" if change is None else f"{change:+.1%}" if unit == "relative" else f"{change:+.3f}" if unit == "absolute"
                          else f"{100 * change:+.1f} points")
    c.print(table)
    shown = {f"{key}_{part}" for key, _, _ in _CHECKS for part in ("before", "after", "change")}
    _print_metrics({k: v for k, v in m.items() if k not in shown and not isinstance(v, (list, dict))}, c)
    if m.get("forgetting_flagged"):
        c.print(f"[yellow]forgetting:[/] general-text perplexity {m.get('probe_ppl_change') or 0:+.1%}, general prompts "
                f"{100 * (m.get('general_score_change') or 0):+.1f} points (past \\[train] forgetting_threshold {card.config.get('forgetting_threshold')}); "
                "try fewer epochs, a lower learning rate or LoRA", soft_wrap=True)


_HEADLINE = {"reward": "accuracy", "dpo": "probe_ppl", "kto": "probe_ppl", "rl": "reward_score"}  # models list's before → after
_CHECKS = [("accuracy", "pairs ordered right", "points"), ("reward_score", "reward-model score of answers", "absolute"), ("eval_loss", "held-out loss", None), ("probe_ppl", "general-text perplexity", "relative"),
           ("general_score", "general prompts right", "points"), ("final_answer_format", "held-out answers ending '#### N'", "points"),
           ("final_answer_em", "held-out final answers right", "points")]


@models_app.command("rm")
def models_rm(name: Annotated[str, typer.Argument(help="A registered model.")], workspace: WorkspaceOpt = None) -> None:
    """Delete a registered model (its adapter or weights, tokenizer and card)."""
    from ragtune.models.registry import remove

    _console().print(f"removed {remove(_workspace(workspace).root, name)}")


@models_app.command("merge")
def models_merge(name: Annotated[str, typer.Argument(help="A registered LoRA model.")],
                 out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the merged model (default: the model's merged/).", show_default=False)] = None,
                 workspace: WorkspaceOpt = None) -> None:
    """Fold a LoRA adapter into its base: a plain Hugging Face model folder (for other tools, or faster serving)."""
    from ragtune.train.merge import merge

    _console().print(f"wrote {merge(_workspace(workspace).root, name, out)}")


@app.command()
def doctor(quick: Annotated[bool, typer.Option("--quick", help="Skip the smoke tests (generation and embedding).")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False) -> None:
    """Check this installation: Python, library versions, CPU, how llama.cpp was built, the bundled
    models, and a smoke test of each model. Paste its output into a bug report."""
    from ragtune.doctor import as_json as checks_json, diagnose

    c = _console()
    if not as_json and not quick:
        _console(stderr=True).print("running the smoke tests (a few seconds; --quick skips them) ...")
    checks = diagnose(smoke=not quick)
    print(checks_json(checks)) if as_json else _print_checks(checks, c)
    if any(ch.problem for ch in checks):
        raise typer.Exit(1)


def _print_checks(checks, c) -> None:
    from rich.markup import escape

    section = None
    for ch in checks:
        if ch.section != section:
            section = ch.section
            c.print(f"[bold]{section}[/]")
        c.print(f"  {'[red]✗[/]' if ch.problem else '[green]✓[/]'} {escape(ch.name)}: {escape(ch.detail)}", soft_wrap=True)
        if ch.problem:
            c.print(f"      [red]problem:[/] {escape(ch.problem)}\n      [bold]fix:[/] {escape(ch.fix)}", soft_wrap=True)
    problems = sum(bool(ch.problem) for ch in checks)
    c.print(f"[red]{problems} problem(s)[/]" if problems else "[green]no problems found[/]")


@app.command()
def serve(host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default: [serve] host, 127.0.0.1).", show_default=False)] = None,
          port: Annotated[Optional[int], typer.Option("--port", "-p", help="Port (default: [serve] port, 8000).", show_default=False)] = None,
          workspace: WorkspaceOpt = None) -> None:
    """Serve the workspace: an OpenAI-compatible API (/v1/chat/completions with model 'rag',
    'closed-book' or a registered model; /v1/models; /v1/embeddings), a chat page at /, and feedback
    (/v1/feedback), stored in .ragtune/feedback.sqlite or the serve section's feedback_url. Loopback
    only unless the serve section's api_keys_env names the variable holding the API keys."""
    import logging

    import uvicorn

    from ragtune.serve.app import api_keys, create_app, settle_heap

    ws = _workspace(workspace)
    ws = ws.with_config(ws.config.override("serve", host=host, port=port))
    cfg = ws.config.serve
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_keys(cfg):
        raise ConfigError(f"--host {cfg.host} would serve the network without API keys: set [serve] api_keys_env to the "
                          "name of an environment variable holding them (e.g. RAGTUNE_API_KEYS) first")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(ws)
    _console(stderr=True).print(f"serving {ws.root} on http://{cfg.host}:{cfg.port}/v1 · feedback in "
                                f"{app.state.store.where} · keys {'on' if api_keys(cfg) else 'off (loopback)'}")
    settle_heap()
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)


@app.command()
def cycle(qa: Annotated[Path, typer.Option("--qa", help="Question set (QA JSONL) the served model and the candidate both answer.")],
          method: Annotated[str, typer.Option("--method", help="auto (DPO when there are pairs, else KTO) | dpo | kto | sft (corrections only)")] = "auto",
          margin: Annotated[float, typer.Option("--margin", help="Promote only when the candidate's F1 beats the served model's by this much.")] = 0.02,
          cycle_id: Annotated[Optional[str], typer.Option("--id", help="Go on with this cycle (its finished steps are skipped); default: a new one.", show_default=False)] = None,
          limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions.", show_default=False)] = None,
          workspace: WorkspaceOpt = None) -> None:
    """One turn of the loop: export feedback -> SFT on corrections, then DPO/KTO on preferences ->
    evaluate the served model and the candidate on --qa -> promote the candidate (as the generate
    section's model in ragtune.toml) only if it wins by --margin and passes the forgetting checks.
    Resumable with --id."""
    from rich.markup import escape

    from ragtune.serve.cycle import run_cycle

    ws = _workspace(workspace)
    with RichProgress() as progress:
        state = run_cycle(ws, qa, cycle_id=cycle_id, method=method, margin=margin, limit=limit,
                          log=lambda line: progress.log(escape(line)), progress=progress)
    c = _console()
    c.print(f"cycle {state['id']} · {ws.state_dir / 'cycles' / state['id'] / 'cycle.json'}")
    decision = state.get("decision") or state["steps"].get("decide", {})
    c.print(("[green]" if decision.get("promoted") else "[yellow]") + escape(decision.get("reason", "")) + "[/]", soft_wrap=True)


@app.command()
def compare(qa: Annotated[Optional[Path], typer.Option("--qa", help="Question set (QA JSONL with answers and doc_ids), split into train and test by document; default: synthetic questions from the index (data synth-qa).", show_default=False)] = None,
            docs: Annotated[Optional[Path], typer.Option("--docs", help="Ingest these documents first (else the workspace's index is used).", show_default=False)] = None,
            demos: Annotated[Optional[Path], typer.Option("--demos", help="Extra demonstrations (SFT data) for both fine-tuned arms.", show_default=False)] = None,
            compare_id: Annotated[Optional[str], typer.Option("--id", help="Go on with this comparison (finished steps and trained models are reused); default: a new one.", show_default=False)] = None,
            epochs: Annotated[Optional[float], typer.Option("--epochs", help="Passes over the training questions (default: [compare] epochs).", show_default=False)] = None,
            fresh: Annotated[Optional[int], typer.Option("--fresh", help="Test answers changed in the documents for the freshness check (default: [compare] fresh_questions; 0 = skip).", show_default=False)] = None,
            synth: Annotated[int, typer.Option("--synth", help="Without --qa: how many synthetic questions to write.")] = 60,
            limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions of --qa.", show_default=False)] = None,
            max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Most tokens per answer (default: [generate] max_tokens).", show_default=False)] = None,
            track: Annotated[bool, typer.Option("--track/--no-track", help="Record every arm as a run (.ragtune/runs/ and MLflow experiment 'compare').")] = True,
            workspace: WorkspaceOpt = None) -> None:
    """RAG or fine-tuning? Four arms of the same base model on the same held-out questions: closed-book,
    RAG, fine-tuned, fine-tuned + RAG (RAFT-style). Measures quality, latency, tokens, training cost,
    freshness (answers changed in the documents) and forgetting, then recommends one from the numbers.
    Resumable with --id; `ragtune report --compare ID` draws the page."""
    from rich.markup import escape
    from rich.table import Table

    from ragtune.experiment.rag_vs_ft import COMPARE_DIR, arm_figures, run_compare

    ws = _workspace(workspace)
    ws.config = (ws.config.override("compare", epochs=epochs, fresh_questions=fresh)
                 .override("generate", max_tokens=max_tokens))
    with RichProgress() as progress:
        state = run_compare(ws, qa, docs=docs, demos=demos, compare_id=compare_id, synth_questions=synth, limit=limit,
                            log=lambda line: progress.log(escape(line)), progress=progress, track=track)
    c = _console()
    split = state["steps"]["split"]
    c.print(f"comparison {state['id']} · {split['train']} training / {split['test']} test questions"
            + (" (synthetic)" if state["qa"]["synthetic"] else "") + f" · {ws.state_dir / COMPARE_DIR / state['id']}")
    table = Table("arm", "F1", "EM", "contains", "prompt tok", "p50 ms", "fresh", "train s", "forgetting", box=None)
    dash = "–"
    for arm, f in arm_figures(state).items():
        table.add_row(arm, *(dash if v is None else f"{v:.3f}" for v in (f["f1"], f["em"], f["contains"])),
                      *(dash if v is None else f"{v:.0f}" for v in (f["prompt_tokens"], f["latency_p50_ms"])),
                      dash if f["freshness"] is None else f"{round(f['freshness'] * f['fresh_questions'])}/{f['fresh_questions']}",
                      dash if f["train_s"] is None else f"{f['train_s']:.0f}",
                      dash if f["forgetting_flagged"] is None else ("flagged" if f["forgetting_flagged"] else "ok"))
    c.print(table)
    c.print("[bold]" + escape(state["recommendation"]["text"]) + "[/]", soft_wrap=True)


@feedback_app.command("stats")
def feedback_stats(workspace: WorkspaceOpt = None) -> None:
    """How many answers were served and how much feedback of each kind came back."""
    from ragtune.serve.feedback import open_store

    ws = _workspace(workspace)
    with open_store(ws) as store:
        counts = store.counts()
    _console().print(f"{store.where}: {counts.pop('responses')} answers served · "
                     + (" · ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no feedback yet"))


@feedback_app.command("export")
def feedback_export(fmt: Annotated[str, typer.Option("--format", "-f", help="kto | dpo | sft | reward")],
                    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
                    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Leave out rows longer than this many tokens with the base model's chat template (default: [train] max_length; RAG prompts carry their sources: 1024 or more keeps them).", show_default=False)] = None,
                    workspace: WorkspaceOpt = None) -> None:
    """Turn feedback into training data in TRL's formats: kto (thumbs and scores), dpo (side-by-side
    choices; a liked and a disliked answer to one prompt), sft (corrections and liked answers),
    reward (rankings). The file is checked as `ragtune data validate` checks it."""
    from transformers import AutoTokenizer

    from ragtune.serve.export import export
    from ragtune.serve.feedback import open_store
    from ragtune.train.finetune import base_folder

    ws = _workspace(workspace)
    ws = ws.with_config(ws.config.override("train", max_length=max_length))
    tokenizer = AutoTokenizer.from_pretrained(str(base_folder(ws.config.train.base, ws.root)))
    with open_store(ws) as store:
        report = export(store, fmt, out, tokenizer, ws.config.train.max_length)
    c = _console()
    used = ", ".join(f"{n} from {k}" for k, n in report.used.items())
    read = ", ".join(f"{n} {k}" for k, n in sorted(report.feedback.items()))
    from rich.markup import escape

    c.print(escape(f"wrote {report.rows} {fmt} rows to {out} ({used}) from {read} feedback"), soft_wrap=True)
    for why, n in report.left_out.items():
        c.print(escape(f"  left out: {n} {why}"), soft_wrap=True)
    c.print(_validate_training_data(ws, out, fmt))


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        from ragtune import __version__

        print(f"ragtune {__version__}")
        raise typer.Exit()


def _print_report(report) -> None:
    from rich.markup import escape

    c = _console()
    c.print(f"added {len(report.added)} · updated {len(report.updated)} · unchanged {len(report.unchanged)} · "
            f"removed {len(report.removed)} · {report.chunks_written} chunks written "
            f"({report.chunks_embedded} embedded, the rest from cache) · {report.seconds:.1f}s"
            + (f" · index version {report.index_version}" if report.index_version is not None else ""))
    if report.engine != "local":
        c.print(f"  on {escape(report.engine)}", soft_wrap=True)
    for p in report.problems:
        mark = "[red]✗[/]" if p.severity == "error" else "[yellow]![/]"
        c.print(f"  {mark} {escape(p.path)}: {escape(p.reason)}", soft_wrap=True)
    if report.errors:
        c.print(f"[red]{len(report.errors)} file(s) not ingested[/]; everything else was committed")


def main() -> None:
    try:
        app()
    except RagtuneError as e:
        from rich.markup import escape

        _console(stderr=True).print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted: committed work is kept; rerun the same command to finish")
        sys.exit(130)


if __name__ == "__main__":
    main()
