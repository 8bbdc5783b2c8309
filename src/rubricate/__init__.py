"""rubricate: score students' written answers against rubrics.

Two scorers share one data model (``rubricate.tasks``, ``rubricate.labels``, ``rubricate.data``):
the compact multi-task student (``rubricate.student``) and the rubric-aligned LLM agents
(``rubricate.agents``); ``rubricate.metrics`` measures both against human raters.
"""

__version__ = "0.1.0"
