"""Rubric-aligned multi-agent scoring (AutoSCORE): extraction -> [verify] -> scoring -> [feedback].

* **multi** mode: the extraction agent returns every rubric component with quoted evidence; each quote is
  checked against the response (grounding); an optional verifier re-checks and may correct the
  extraction; the scoring agent applies the rubric to the components (or, with ``scoring="rules"``, the
  task's deterministic scoring rules do); an optional feedback agent writes <= N words for the student.
* **single** mode: the one-call baseline (rubric + response in, score out).

Whatever goes wrong - a reply that never validates after ``max_attempts``, a timeout, a server error -
the result has ``status="failed"``, ``score=None``, the raw text and the error: a failure is never a
score. Optional agents (verifier, feedback) failing do not fail the result; they leave a warning.

Self-consistency (``samples`` > 1) samples the scoring step n times at ``sample_temperature``; the score
is the majority vote (ties go to the lower score: a conservative choice) and ``agreement`` is the share of
valid samples that voted for it. The vote shares, or token log-probabilities of the score where the
backend gives them, form ``score_distribution`` (used by the teacher bridge).
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from pydantic import BaseModel, Field

from rubricate.agents.backends import BackendError, Completion, LLMBackend
from rubricate.agents.cache import RequestCache, ResultsFile, read_latest
from rubricate.agents.templates import build_messages
from rubricate.agents.schemas import (
    OutputError, agent_components, extraction_model, feedback_model, json_schema, parse_output, score_keys,
    response_spans, score_model, scores_from, verify_model,
)
from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.tasks import Task, TaskRegistry

Mode = Literal["multi", "single"]
Scoring = Literal["llm", "rules"]


class ComponentValue(BaseModel):
    """One extracted component: its value, the evidence quotes, and whether each quote occurs in the response."""

    value: Any
    evidence: list[str] = Field(default_factory=list)
    grounded: list[bool] = Field(default_factory=list)


class CallRecord(BaseModel):
    """Accounting of one backend call (one attempt of one agent)."""

    agent: str
    attempt: int
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    retries: int = 0
    cached: bool = False
    error: str | None = None
    cost_usd: float | None = None  #: this call's cost (None without a price for the model; 0 when cached)


class AgentResult(BaseModel):
    """The outcome for one response (contract in docs/DEVELOPING.md). ``score`` is None whenever
    ``status == "failed"``; for purely analytic tasks it is the number of criteria met."""

    task_id: str
    response_id: str
    status: Literal["ok", "failed"]
    score: int | None = None
    scores: dict[str, int] = Field(default_factory=dict)
    components: dict[str, ComponentValue] = Field(default_factory=dict)
    grounding_rate: float | None = None
    ungrounded: list[str] = Field(default_factory=list, description="'component: quote' not found in the response")
    rule_score: int | None = None
    rule_scores: dict[str, int] = Field(default_factory=dict)
    corrections: list[str] | None = None
    feedback: str | None = None
    score_distribution: dict[str, list[float]] | None = None  # per score key: P(min..max)
    distribution_source: Literal["votes", "logprobs"] | None = None
    votes: dict[str, list[int]] | None = None
    agreement: float | None = None
    raw_outputs: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    warnings: list[str] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    tokens: dict[str, int] = Field(default_factory=dict)
    latency_s: float = 0.0
    cost_usd: float | None = None
    mode: Mode = "multi"
    scoring: Scoring = "llm"
    backend: str = ""
    model: str = ""


DEFAULT_MAX_TOKENS = {"extract": 1024, "verify": 1200, "score": 320, "single": 320, "feedback": 240}


@dataclass
class PipelineConfig:
    """Every knob of the pipeline; defaults follow the issue (temperature 0, bounded retries).

    ``max_attempts``: parse/validate attempts per agent call (each retry shows the model its error;
    a reply cut off by ``max_tokens`` is retried with ``length_growth`` times more tokens).
    ``rationale_chars``: cap of the scoring rationale (0 = no rationale: fastest).
    ``max_quotes``/``quote_chars``/``list_items``: decoding caps of the extraction (see schemas.py).
    ``evidence``: ``"free"`` lets the model write its quotes (then checked: the grounding rate);
    ``"spans"`` restricts every quote to a sentence or clause of the response through the output
    schema, so constrained decoders (llama.cpp, OpenAI strict) can only quote the student's words.
    ``prices``: model name -> (USD per 1M input tokens, USD per 1M output tokens); cost is None without it.
    ``logprobs``: ask for token log-probabilities to build the score distribution (when samples == 1).
    """

    mode: Mode = "multi"
    scoring: Scoring = "llm"
    verify: bool = False
    feedback: bool = False
    samples: int = 1
    temperature: float = 0.0
    sample_temperature: float = 0.7
    seed: int = 0
    max_attempts: int = 3
    length_growth: float = 2.0
    max_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_TOKENS))
    rationale_chars: int = 300
    max_quotes: int = 3
    quote_chars: int = 200
    list_items: int = 6
    evidence: Literal["free", "spans"] = "free"
    #: ``evidence`` when the backend is an in-process GGUF model and none is asked for: models that small
    #: almost never quote verbatim (free-quote grounding 0.00-0.08 at 135M-270M), spans are grounded by construction
    local_evidence: Literal["free", "spans"] = "spans"
    feedback_words: int = 80
    logprobs: bool = False
    prices: dict[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("multi", "single"):
            raise ValueError(f"mode must be 'multi' or 'single', got {self.mode!r}")
        if self.scoring not in ("llm", "rules"):
            raise ValueError(f"scoring must be 'llm' or 'rules', got {self.scoring!r}")
        if self.scoring == "rules" and self.mode == "single":
            raise ValueError("scoring='rules' needs the extraction agent (mode='multi')")
        if self.evidence not in ("free", "spans") or self.local_evidence not in ("free", "spans"):
            raise ValueError(f"evidence must be 'free' or 'spans', got {self.evidence!r} / {self.local_evidence!r}")
        if self.samples < 1 or self.max_attempts < 1:
            raise ValueError("samples and max_attempts must be >= 1")
        self.max_tokens = {**DEFAULT_MAX_TOKENS, **self.max_tokens}


# --- grounding ---------------------------------------------------------------------------------------
_PUNCT = "\"'`.,;:!?()[]{}«»“”‘’-–—… "


def normalize_text(s: str) -> str:
    """Case-folded text with ASAP paragraph marks (^p) removed, curly quotes straightened and whitespace collapsed."""
    s = s.replace("^p", " ").replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(s.casefold().split())


def is_grounded(quote: str, response: str) -> bool:
    """A quote is grounded when, normalised and stripped of surrounding punctuation, it occurs in the response."""
    q = normalize_text(quote).strip(_PUNCT)
    return bool(q) and q in normalize_text(response)


def ground(extraction: dict[str, Any], response: str) -> tuple[dict[str, ComponentValue], float | None, list[str]]:
    comps: dict[str, ComponentValue] = {}
    total = hits = 0
    ungrounded: list[str] = []
    for cid, item in extraction.items():
        quotes = [q for q in item.get("evidence", []) if q.strip()]
        flags = [is_grounded(q, response) for q in quotes]
        total += len(flags)
        hits += sum(flags)
        ungrounded += [f"{cid}: {q}" for q, ok in zip(quotes, flags) if not ok]
        comps[cid] = ComponentValue(value=item.get("value"), evidence=quotes, grounded=flags)
    return comps, (hits / total if total else None), ungrounded


# --- score distributions -----------------------------------------------------------------------------
def logprob_distribution(comp: Completion, key: str, lo: int, hi: int) -> list[float] | None:
    """P(score = lo..hi) from the top log-probabilities of the token that wrote ``"key": N``.

    Only single-digit ranges (0-9) are supported (a multi-token number has no single decision point);
    the mass of the in-range alternatives is renormalised (the top list comes from unconstrained logits).
    """
    if comp.logprobs is None or lo < 0 or hi > 9:
        return None
    m = re.search(r'"' + re.escape(key) + r'"\s*:\s*(\d)', comp.text)
    if not m:
        return None
    pos = m.start(1)
    tok = next((t for t in comp.logprobs if t.offset <= pos < t.offset + max(1, len(t.token))), None)
    if tok is None:
        return None
    mass = [0.0] * (hi - lo + 1)
    top = dict(tok.top) or {tok.token: tok.logprob}
    for t, lp in top.items():
        s = t.strip()
        if s.isdigit() and lo <= int(s) <= hi:
            mass[int(s) - lo] += math.exp(lp)
    z = sum(mass)
    return [m_ / z for m_ in mass] if z > 0 else None


def majority(values: Sequence[int]) -> tuple[int, float]:
    """Majority vote (ties -> the lower score) and the share of votes it got."""
    counts = Counter(values)
    best = max(counts.values())
    winner = min(v for v, c in counts.items() if c == best)
    return winner, best / len(values)


# --- the pipeline ------------------------------------------------------------------------------------
class _Failure(Exception):
    def __init__(self, agent: str, message: str) -> None:
        self.agent = agent
        super().__init__(f"{agent}: {message}")


class AgentPipeline:
    """Runs the agents for one task on one backend (thread safe: one instance serves many workers)."""

    def __init__(self, task: Task, backend: LLMBackend, config: PipelineConfig | None = None,
                 cache: RequestCache | None = None) -> None:
        self.task = task
        self.backend = backend
        self.config = config or PipelineConfig()
        self.cache = cache or RequestCache(".", enabled=False)
        c = self.config
        kw = dict(max_quotes=c.max_quotes, quote_chars=c.quote_chars, list_items=c.list_items)
        self.extract_model = extraction_model(task, **kw)
        self.verify_model = verify_model(task, **kw)
        self.score_model = score_model(task, rationale_chars=c.rationale_chars)
        self.feedback_model = feedback_model(c.feedback_words)
        self.component_ids = [comp.id for comp in agent_components(task)]
        if c.scoring == "rules":
            ruled = {r.scale for r in task.rubric.scoring_rules}
            missing = [s.id for s in task.scales if s.id not in ruled]
            if missing:
                raise ValueError(f"task '{task.id}' has no scoring rule for scale(s) {missing}; use scoring='llm'")

    # one agent call with bounded parse/validate retries ---------------------------------------------
    def _call(self, agent: str, messages: list[dict[str, str]], model: type[BaseModel], res: AgentResult, *,
              temperature: float, seed: int, label: str | None = None) -> tuple[BaseModel, Completion]:
        c = self.config
        schema = json_schema(model)
        label = label or agent
        msgs = list(messages)
        max_tokens = c.max_tokens[agent]
        last_err = ""
        for attempt in range(1, c.max_attempts + 1):
            params = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed, "logprobs": c.logprobs}
            key = self.cache.key(self.backend.name, self.backend.model, self.backend.params(), msgs, params, schema)
            comp = self.cache.get(key)
            if comp is None:
                try:
                    comp = self.backend.complete(msgs, schema=schema, schema_name=agent, temperature=temperature,
                                                 max_tokens=max_tokens, seed=seed, logprobs=c.logprobs, slot=agent)
                except BackendError as e:
                    res.calls.append(CallRecord(agent=label, attempt=attempt, retries=e.retries, error=str(e)))
                    raise _Failure(label, str(e)) from None
                self.cache.put(key, comp)
            res.raw_outputs[label if attempt == 1 else f"{label}#{attempt}"] = comp.text
            rec = CallRecord(agent=label, attempt=attempt, tokens_in=comp.tokens_in, tokens_out=comp.tokens_out,
                             latency_s=comp.latency_s, retries=comp.retries, cached=comp.cached)
            res.calls.append(rec)
            try:
                return parse_output(comp.text, model), comp
            except OutputError as e:
                rec.error = last_err = str(e)
                cut = comp.finish_reason == "length"
                if cut:
                    max_tokens = int(max_tokens * c.length_growth)
                hint = " (it was cut off by the token limit; be brief)" if cut else ""
                msgs = list(messages) + [
                    {"role": "assistant", "content": comp.text},
                    {"role": "user", "content": f"That reply was not valid{hint}: {e}. Reply again with only "
                                                f"the JSON object, following the schema exactly."}]
        raise _Failure(label, f"no valid output after {c.max_attempts} attempts; last error: {last_err}")

    def _scores(self, agent: str, messages: list[dict[str, str]], res: AgentResult) -> dict[str, int]:
        """Score once (temperature 0) or by self-consistency; fills votes, agreement, distribution."""
        c = self.config
        keys = score_keys(self.task)
        if c.samples == 1:
            parsed, comp = self._call(agent, messages, self.score_model, res, temperature=c.temperature, seed=c.seed)
            scores = scores_from(parsed, self.task)
            if c.logprobs:
                dists = {k: logprob_distribution(comp, k, lo, hi) for k, lo, hi in keys}
                if all(d is not None for d in dists.values()):
                    res.score_distribution = dists  # type: ignore[assignment]
                    res.distribution_source = "logprobs"
            return scores
        samples: list[dict[str, int]] = []
        errors: list[str] = []
        for i in range(c.samples):
            try:
                parsed, _ = self._call(agent, messages, self.score_model, res, temperature=c.sample_temperature,
                                       seed=c.seed + i, label=f"{agent}[{i}]")
                samples.append(scores_from(parsed, self.task))
            except _Failure as e:
                errors.append(str(e))
        if not samples:
            raise _Failure(agent, f"all {c.samples} samples failed; first error: {errors[0]}")
        if errors:
            res.warnings.append(f"{len(errors)} of {c.samples} samples failed and were not counted: {errors[0]}")
        res.votes = {k: [s[k] for s in samples] for k, _, _ in keys}
        out: dict[str, int] = {}
        agreements = []
        dist: dict[str, list[float]] = {}
        for k, lo, hi in keys:
            out[k], share = majority(res.votes[k])
            agreements.append(share)
            cnt = Counter(res.votes[k])
            dist[k] = [cnt.get(v, 0) / len(samples) for v in range(lo, hi + 1)]
        primary = self.task.primary_scale
        res.agreement = agreements[0] if primary is not None else min(agreements)
        res.score_distribution, res.distribution_source = dist, "votes"
        return out

    def rule_scores(self, components: dict[str, ComponentValue]) -> dict[str, int]:
        """Deterministic scores: the task's scoring rules, plus 0/1 criteria from ``crit_<id>`` components."""
        values = {cid: cv.value for cid, cv in components.items()}
        out = self.task.apply_rules(values) if self.task.rubric.scoring_rules else {}
        if not self.task.components:
            for crit in self.task.criteria:
                cid = "crit_" + re.sub(r"[^A-Za-z0-9_]", "_", crit.id)
                if cid in values:
                    out[crit.id] = int(bool(values[cid]))
        return out

    def _primary(self, scores: dict[str, int]) -> int:
        p = self.task.primary_scale
        return scores[p.id] if p is not None else sum(scores[c.id] for c in self.task.criteria)

    def score(self, record: Record) -> AgentResult:
        """Score one response. Never raises for model or server problems: they become a failed result."""
        if record.task_id != self.task.id:
            raise ValueError(f"record '{record.response_id}' is for task '{record.task_id}', not '{self.task.id}'")
        c = self.config
        t0 = time.perf_counter()
        res = AgentResult(task_id=record.task_id, response_id=record.response_id, status="failed", mode=c.mode,
                          scoring=c.scoring, backend=self.backend.name, model=self.backend.model)
        try:
            self._run(record, res)
            res.status = "ok"
        except _Failure as e:
            # nothing score-like survives a failure: the rule score of a valid extraction whose scoring step
            # failed is dropped too (the components and raw outputs stay, for the audit trail)
            res.status, res.error, res.score, res.scores = "failed", str(e), None, {}
            res.rule_score, res.rule_scores = None, {}
            res.score_distribution = res.distribution_source = res.agreement = None
        res.latency_s = time.perf_counter() - t0
        res.tokens = {"in": sum(x.tokens_in for x in res.calls), "out": sum(x.tokens_out for x in res.calls),
                      "calls": len(res.calls), "cached_calls": sum(x.cached for x in res.calls)}
        if c.prices and self.backend.model in c.prices:
            pin, pout = c.prices[self.backend.model]
            for x in res.calls:  # a cached call cost nothing this time
                x.cost_usd = 0.0 if x.cached else (x.tokens_in * pin + x.tokens_out * pout) / 1e6
            res.cost_usd = sum(x.cost_usd or 0.0 for x in res.calls)
        return res

    def _run(self, record: Record, res: AgentResult) -> None:
        c, task, text = self.config, self.task, record.text
        if c.mode == "single":
            schema = json_schema(self.score_model)
            res.scores = self._scores("single", build_messages("single", task, text, schema=schema), res)
            res.score = self._primary(res.scores)
            extraction = None
        else:
            extract_model, verify_model_ = self.extract_model, self.verify_model
            spans = response_spans(text, c.quote_chars) if c.evidence == "spans" else []
            if spans:  # per-response schemas: quotes restricted to the response's own sentences / clauses
                kw = dict(max_quotes=c.max_quotes, quote_chars=c.quote_chars, list_items=c.list_items,
                          evidence_spans=spans)
                extract_model = extraction_model(task, **kw)
                if c.verify:
                    verify_model_ = verify_model(task, **kw)
            schema = json_schema(extract_model)
            parsed, _ = self._call("extract", build_messages("extract", task, text, schema=schema), extract_model,
                                   res, temperature=c.temperature, seed=c.seed)
            extraction = parsed.model_dump()
            if c.verify:
                vschema = json_schema(verify_model_)
                try:
                    vparsed, _ = self._call("verify", build_messages("verify", task, text, schema=vschema,
                                                                     extraction=extraction),
                                            verify_model_, res, temperature=c.temperature, seed=c.seed)
                    vd = vparsed.model_dump()
                    res.corrections = vd["corrections"]
                    extraction = vd["components"]
                except _Failure as e:
                    res.warnings.append(f"verifier failed, unverified extraction kept: {e}")
            res.components, res.grounding_rate, res.ungrounded = ground(extraction, text)
            res.rule_scores = self.rule_scores(res.components)
            p = task.primary_scale
            if p is not None and p.id in res.rule_scores:
                res.rule_score = res.rule_scores[p.id]
            if c.scoring == "rules":
                res.scores = {k: res.rule_scores[k] for k, _, _ in score_keys(task)}
            else:
                sschema = json_schema(self.score_model)
                res.scores = self._scores("score", build_messages("score", task, text, schema=sschema,
                                                                  extraction=extraction), res)
            res.score = self._primary(res.scores)
        if c.feedback:
            fschema = json_schema(self.feedback_model)
            try:
                fparsed, _ = self._call("feedback", build_messages("feedback", task, text, schema=fschema,
                                                                   extraction=extraction, scores=res.scores,
                                                                   max_words=c.feedback_words),
                                        self.feedback_model, res, temperature=c.temperature, seed=c.seed)
                res.feedback = fparsed.model_dump()["feedback"].strip()
            except _Failure as e:
                res.warnings.append(f"feedback failed: {e}")


# --- many responses ----------------------------------------------------------------------------------
def unique_keys(records: Sequence[Record]) -> list[tuple[str, str]]:
    """The records' (task_id, response_id) keys; a repeated key is an input error (it would be scored twice)."""
    keys = [r.key for r in records]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    if dupes:
        raise InputError(f"{len(dupes)} duplicate (task_id, response_id) keys in the input, e.g. {dupes[:3]}")
    return keys


def open_results(output: str | Path | None, resume: bool, backend_name: str, model: str | None,
                 cfg: PipelineConfig) -> tuple[ResultsFile | None, dict[tuple[str, str], AgentResult]]:
    """The results file (checked against this run's backend, model, mode and scoring) and, when resuming,
    the results already stored ``ok`` in it, by key: what a rerun must not score again."""
    expect = {"backend": backend_name, "model": model, "mode": cfg.mode, "scoring": cfg.scoring}
    out = ResultsFile(output, resume=resume, expect=expect) if output is not None else None
    previous: dict[tuple[str, str], AgentResult] = {}
    if out is not None and out.done:
        latest = read_latest(out.path)
        previous = {k: AgentResult.model_validate(latest[k]) for k in out.done}
    return out, previous


def score_responses(
    tasks: Task | TaskRegistry,
    records: Iterable[Record],
    backend: LLMBackend,
    config: PipelineConfig | None = None,
    *,
    cache: RequestCache | None = None,
    output: str | Path | None = None,
    resume: bool = True,
    concurrency: int = 1,
    progress: bool = False,
    on_result: Any = None,
) -> list[AgentResult]:
    """Score records (possibly of several tasks), at most ``concurrency`` at once (capped by the backend).

    With ``output``, each result is appended to a JSONL file as soon as it exists (fsynced), and with
    ``resume`` the records already scored ``ok`` there are skipped and their stored results returned:
    killing a run and starting it again neither loses nor re-scores anything. Results come back in the
    order of ``records``. ``on_result(result)`` is called for every new result (e.g. live display).
    """
    records = list(records)
    registry = tasks if isinstance(tasks, TaskRegistry) else TaskRegistry([tasks])
    keys = unique_keys(records)
    pipelines = {tid: AgentPipeline(registry.get(tid), backend, config, cache)
                 for tid in dict.fromkeys(r.task_id for r in records)}
    out, previous = open_results(output, resume, backend.name, backend.model, config or PipelineConfig())
    todo = [r for r in records if r.key not in previous]
    results: dict[tuple[str, str], AgentResult] = dict(previous)
    lock = threading.Lock()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="resp", desc="scoring",
                   dynamic_ncols=True)

    def work(rec: Record) -> AgentResult:
        r = pipelines[rec.task_id].score(rec)
        if out is not None:
            out.append(r.model_dump(mode="json"))
        with lock:
            results[rec.key] = r
            if bar is not None:
                failed = sum(1 for x in results.values() if x.status == "failed")
                bar.set_postfix(failed=failed, refresh=False)
                bar.update(1)
        if on_result is not None:
            on_result(r)
        return r

    try:
        workers = max(1, min(concurrency, getattr(backend, "max_concurrency", 1)))
        if workers == 1:
            for rec in todo:
                work(rec)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(work, todo))
    finally:
        if bar is not None:
            bar.close()
        if out is not None:
            out.close()
    return [results[k] for k in keys]


async def ascore_responses(tasks: Task | TaskRegistry, records: Iterable[Record], backend: LLMBackend,
                           config: PipelineConfig | None = None, *, cache: RequestCache | None = None,
                           concurrency: int = 4) -> list[AgentResult]:
    """Async variant for servers: at most ``concurrency`` responses in flight (an asyncio semaphore),
    each scored in a worker thread so the event loop stays responsive."""
    registry = tasks if isinstance(tasks, TaskRegistry) else TaskRegistry([tasks])
    records = list(records)
    pipelines = {tid: AgentPipeline(registry.get(tid), backend, config, cache)
                 for tid in dict.fromkeys(r.task_id for r in records)}
    sem = asyncio.Semaphore(max(1, min(concurrency, getattr(backend, "max_concurrency", 1))))

    async def one(rec: Record) -> AgentResult:
        async with sem:
            return await asyncio.to_thread(pipelines[rec.task_id].score, rec)

    return list(await asyncio.gather(*(one(r) for r in records)))


def summarize(results: Sequence[AgentResult]) -> dict[str, Any]:
    """Run-level accounting: counts, failure share, grounding, tokens, latency, cost."""
    n = len(results)
    ok = [r for r in results if r.status == "ok"]
    rates = [r.grounding_rate for r in ok if r.grounding_rate is not None]
    costs = [r.cost_usd for r in results if r.cost_usd is not None]
    return {
        "n": n, "ok": len(ok), "failed": n - len(ok), "failed_share": (n - len(ok)) / n if n else None,
        "grounding_rate": sum(rates) / len(rates) if rates else None,
        "tokens_in": sum(r.tokens.get("in", 0) for r in results),
        "tokens_out": sum(r.tokens.get("out", 0) for r in results),
        "seconds_per_response": sum(r.latency_s for r in results) / n if n else None,
        "cost_usd": sum(costs) if costs else None,
        "agreement": (sum(r.agreement for r in ok if r.agreement is not None) /
                      max(1, sum(r.agreement is not None for r in ok))) if any(r.agreement is not None for r in ok)
        else None,
    }
