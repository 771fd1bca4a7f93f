"""One choice's sampler settings, declared once: the gateway's request fields
default to them, the gateway sends ``PAYLOAD_FIELDS`` of them to a worker, and
the engine samples with them. Plain Python: the gateway imports it, and a worker
imports it at cold start."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sampling:
    """Greedy at temperature 0."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64  # tokens repeat_penalty looks back on (-1: the context, 0: none)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None
    ignore_eos: bool = False


DEFAULT = Sampling()
# what a request carries to the worker as such (logit_bias and grammar are added when set)
PAYLOAD_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
                  "frequency_penalty", "seed", "ignore_eos")
