"""Rubric-aligned multi-agent LLM scoring (AutoSCORE-style): backends, agents, reliability, teacher bridge.

Public API::

    from rubricate.agents import make_backend, score_responses, PipelineConfig, AgentResult
    backend = make_backend("local")                       # embedded SmolLM2-135M, no server, no key
    backend = make_backend("openai", model="gpt-4o", base_url=None, api_key_env="OPENAI_API_KEY")
    results = score_responses(task, records, backend, PipelineConfig(mode="multi", feedback=True))

Heavy dependencies (openai, llama_cpp) are imported only when a backend is built.
"""

from rubricate.agents.backends import BackendError, Completion, LLMBackend, make_backend
from rubricate.agents.pipeline import (
    AgentPipeline, AgentResult, ComponentValue, PipelineConfig, ascore_responses, score_responses, summarize,
)

__all__ = [
    "AgentPipeline", "AgentResult", "BackendError", "ComponentValue", "Completion", "LLMBackend", "PipelineConfig",
    "ascore_responses", "make_backend", "score_responses", "summarize",
]
