"""The ``ragtune`` command: a thin table over the library.

Each command parses flags, calls one library function and prints the result. Library errors
(``RagtuneError``) become one line on stderr and a non-zero exit code, never a traceback.
Heavy imports happen inside the commands, so ``ragtune --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ragtune.errors import RagtuneError

app = typer.Typer(help="RAG or fine-tuning? Build, measure and improve both, offline.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
index_app = typer.Typer(help="Inspect and maintain the index.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval and answers.", no_args_is_help=True)
data_app = typer.Typer(help="Question sets and other data: import, validate.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")

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
           exclude: Annotated[Optional[list[str]], typer.Option("--exclude", help="Glob of files to skip (repeatable, added to [ingest] exclude).", show_default=False)] = None,
           workspace: WorkspaceOpt = None) -> None:
    """Load, chunk, embed and index files; only new or changed files are processed."""
    ws = _workspace(workspace)
    if include or exclude:
        ws.config = ws.config.override("ingest", include=include or None,
                                       exclude=(ws.config.ingest.exclude + exclude) if exclude else None)
    with _RichProgress() as progress:
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
    answer = _answer(ws, question, stream and not as_json, k=k, mode=mode, filters=filter)
    if as_json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return
    print_answer(answer, _console(), show_prompt, printed=stream)


def _answer(ws, question: str, stream: bool, history=None, **kwargs):
    s = ws.stream(question, history=history, **kwargs)
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
    from ragtune.rag.chain import standalone_question

    ws = _rag_workspace(workspace, generator, model)
    c = _console()
    history: list[dict[str, str]] = []
    c.print("[dim]Ask a question (empty line or Ctrl-D to end).[/]")
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question:
            break
        query = standalone_question(ws, history, question)
        if query != question:
            c.print(f"[dim]searching for: {query}[/]")
        answer = _answer(ws, query, stream=True, k=k, mode=mode, history=history[-4:])
        print_answer(answer, c, printed=True)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.text}]


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
    with _RichProgress() as progress:
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

    with _RichProgress() as progress:
        result = evaluate_beir(beir, split=split, mode=mode, k=k, scratch=scratch, workspace=workspace, progress=progress)
    c = _console()
    c.print(f"[bold]{result['dataset']}[/] ({result['split']}, {result['queries']} queries, mode {result['mode']}, "
            f"{result['documents']} docs in {result['chunks']} chunks)")
    for name, value in result["metrics"].items():
        c.print(f"  {name:>10}: {value:.4f}")
    t = result["timings"]
    c.print(f"  ingest {t['ingest_s']:.1f}s · query p50 {t['query_p50_ms']:.1f} ms · p95 {t['query_p95_ms']:.1f} ms · p99 {t['query_p99_ms']:.1f} ms")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        c.print(f"  wrote {json_out}")


@eval_app.command("qa")
def eval_qa(qa: Annotated[Path, typer.Option("--qa", help="QA JSONL file (id, question, answers[, doc_ids, context, metadata]).")],
            arm: Annotated[str, typer.Option("--arm", help="rag | closed-book")] = "rag",
            k: Annotated[Optional[int], typer.Option("-k", help="Chunks retrieved per question (default: [retrieve] k).", show_default=False)] = None,
            mode: ModeOpt = None, generator: GenOpt = None, model: ModelOpt = None,
            limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N questions.", show_default=False)] = None,
            json_out: Annotated[Optional[Path], typer.Option("--json", help="Write metrics and every prediction (prompt, retrieved ids, answer) here.", show_default=False)] = None,
            workspace: WorkspaceOpt = None) -> None:
    """Answer a question set and score EM/F1/contains, evidence recall, citations, groundedness, latency."""
    from ragtune.evaluate.qa import load_qa
    from ragtune.evaluate.qa_eval import evaluate_qa

    items = load_qa(qa)[:limit]
    ws = _rag_workspace(workspace, generator, model)
    with _RichProgress() as progress:
        result = evaluate_qa(ws, items, arm=arm, k=k, mode=mode, progress=progress)
    c = _console()
    c.print(f"[bold]{qa.name}[/] · {result['questions']} questions · arm {arm} · {result['generator']}")
    for name, value in result["metrics"].items():
        if value is not None:
            c.print(f"  {name:>22}: {value:.4f}" if isinstance(value, float) else f"  {name:>22}: {value}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        c.print(f"  wrote {json_out}")


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


@data_app.command("validate")
def data_validate(path: Annotated[Path, typer.Argument(help="QA JSONL file.")]) -> None:
    """Check a QA JSONL file; problems are listed by line."""
    from ragtune.evaluate.qa import load_qa

    items = load_qa(path)
    _console().print(f"{path}: {len(items)} questions, {sum(bool(i.doc_ids) for i in items)} with gold doc ids — OK")


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        from ragtune import __version__

        print(f"ragtune {__version__}")
        raise typer.Exit()


class _RichProgress:
    """Progress bars for ingest: files loaded and chunks embedded."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                            console=_console(stderr=True), transient=False)
        self.bar.__enter__()
        self.files = self.chunks = None
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, files: int) -> None:
        self.files = self.bar.add_task("files", total=files, note="")
        self.chunks = self.bar.add_task("chunks", total=0, note="")

    def file_done(self, source: str, chunks: int) -> None:
        self.bar.update(self.files, advance=1, note=source[-40:])
        task = self.bar.tasks[self.chunks]
        self.bar.update(self.chunks, total=(task.total or 0) + chunks)

    def embedded(self, n: int) -> None:
        self.bar.update(self.chunks, advance=n)

    # evaluation uses the same bar for queries
    def task(self, name: str, total: int):
        return self.bar.add_task(name, total=total, note="")

    def advance(self, task, n: int = 1) -> None:
        self.bar.update(task, advance=n)


def _print_report(report) -> None:
    from rich.markup import escape

    c = _console()
    c.print(f"added {len(report.added)} · updated {len(report.updated)} · unchanged {len(report.unchanged)} · "
            f"removed {len(report.removed)} · {report.chunks_written} chunks written "
            f"({report.chunks_embedded} embedded, the rest from cache) · {report.seconds:.1f}s"
            + (f" · index version {report.index_version}" if report.index_version is not None else ""))
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
