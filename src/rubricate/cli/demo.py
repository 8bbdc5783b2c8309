"""``rubricate demo``: the main job on embedded defaults (see rubricate/demo.py for the steps)."""

from __future__ import annotations

from pathlib import Path

import typer

from rubricate.demo import DemoConfig

_D = DemoConfig  # option defaults are read from the library's dataclass, never retyped


def register(app: typer.Typer) -> None:
    """Add ``rubricate demo``."""

    @app.command("demo")
    def demo(
        out: Path = typer.Option(_D.out_dir, "--out", help="Output folder (split, teacher, checkpoints, report)."),
        epochs: float = typer.Option(_D.epochs, help="Override the demo recipe's epochs (e.g. 1 for a smoke run)."),
        seed: int = typer.Option(_D.seed, help="Seed of the split, the teacher folds and training."),
        agents: bool = typer.Option(_D.agents, "--agents/--no-agents",
                                    help="Also score one response with the LLM agents."),
        agents_model: str = typer.Option(_D.agents_model,
                                         help="Local GGUF for the agents step: smollm2, gemma3 or a path."),
        n_boot: int = typer.Option(_D.n_boot, help="Bootstrap resamples for the report's confidence intervals."),
        evidence: str = typer.Option(_D.agents_evidence, "--evidence",
                                     help="Agents step: spans (quotes are numbered spans of the response) | free "
                                          "(the model writes its quotes; grounding is checked)."),
    ) -> None:
        """Run the whole pipeline on the demo set: tasks -> split -> teacher -> student -> report -> add-task -> agents."""
        from rubricate.demo import run_demo

        run_demo(DemoConfig(out_dir=out, epochs=epochs, seed=seed, agents=agents, agents_model=agents_model,
                            n_boot=n_boot, agents_evidence=evidence))
