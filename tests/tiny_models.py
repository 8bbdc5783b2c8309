"""Tiny random encoders (and causal LMs) built in code, for the tests only (not shipped in the package).

Real models are too slow for a 2-core CI machine; these have the same interfaces (a Hugging Face
directory with config, weights and a fast tokenizer) and train in a second. Any English text
tokenizes: the WordPiece vocabulary holds every letter and digit, also as ``##`` continuations.
"""

from __future__ import annotations

import string
from pathlib import Path

_WORDS = ("the a an and or of to in is are was it that this because cell gas water acid rain plant energy "
          "protein dna rna mrna trna membrane invasive species panda koala rose mr leonard doghouse "
          "temperature light dark color black white experiment data result more less increase decrease").split()


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    cont = ["##" + c for c in string.ascii_lowercase + string.digits]
    return specials + chars + cont + [w for w in dict.fromkeys(_WORDS) if w not in chars]


def make_tiny_tokenizer(out_dir: str | Path):
    """A BertTokenizerFast over :func:`tiny_vocab`, saved to ``out_dir``."""
    from transformers import BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(tiny_vocab())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(str(out))
    return tok


def make_tiny_encoder(out_dir: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                      seed: int = 0, arch: str = "bert") -> Path:
    """Write a random encoder (hidden 32, 2 layers by default) plus tokenizer to ``out_dir``.

    ``arch``: ``"bert"`` (MiniLM's architecture) or ``"mpnet"`` (all-mpnet-base-v2's: relative position
    buckets and no token-type embeddings, so it catches code that assumes BERT's inputs).
    """
    import torch
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    out = Path(out_dir)
    tok = make_tiny_tokenizer(out)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=hidden * 2, max_position_embeddings=256)
    if arch == "bert":
        BertModel(BertConfig(**common), add_pooling_layer=False).save_pretrained(str(out))
    elif arch == "mpnet":
        MPNetModel(MPNetConfig(**common, pad_token_id=tok.pad_token_id), add_pooling_layer=False
                   ).save_pretrained(str(out))
    else:
        raise ValueError(f"unknown tiny encoder architecture {arch!r} (bert, mpnet)")
    return out


def make_tiny_causal_lm(out_dir: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a random Llama-architecture causal LM plus tokenizer (for the LLM-teacher tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = make_tiny_tokenizer(out)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------------------------------------
# Tiny tasks and records whose labels follow from the words (so that a model can learn them quickly)
# --------------------------------------------------------------------------------------------------------
TINY_RULES: dict[str, tuple[str, ...]] = {
    "tiny-ord": ("acid", "rain"),  # ordinal 0-2: how many of these words appear
    "tiny-crit": ("cell", "energy"),  # analytic: E1 = mentions 'cell', E2 = mentions 'energy'
    "tiny-new": ("water", "gas", "light"),  # ordinal 0-3, the task added later
}
_FILLER = "the a of and is it that this plant dna color black white data more less".split()


def tiny_tasks():
    """A TaskRegistry with an ordinal task, an analytic task and a 'new' ordinal task."""
    from rubricate.tasks import TaskRegistry, task_from_dict

    def ordinal(tid: str, top: int) -> dict:
        return {"id": tid, "title": tid, "question": f"Use the words {TINY_RULES[tid]}.",
                "rubric": {"scales": [{"id": "score", "min": 0, "max": top,
                                       "levels": [{"score": k, "description": f"{k} key words"}
                                                  for k in range(top + 1)]}]}}

    crit = {"id": "tiny-crit", "title": "tiny-crit", "question": "Talk about cells and energy.",
            "rubric": {"criteria": [{"id": "E1", "description": "mentions cell"},
                                    {"id": "E2", "description": "mentions energy"}]}}
    return TaskRegistry([task_from_dict(ordinal("tiny-ord", 2)), task_from_dict(crit),
                         task_from_dict(ordinal("tiny-new", 3))])


def tiny_records(task_id: str, n: int, seed: int = 0, prefix: str = "r"):
    """``n`` random responses for a tiny task, labelled by its rule (see :data:`TINY_RULES`)."""
    import random

    from rubricate.data.records import Record

    rng = random.Random(f"{task_id}-{seed}")
    words = TINY_RULES[task_id]
    out = []
    for i in range(n):
        present = [w for w in words if rng.random() < 0.5]
        toks = present + rng.sample(_FILLER, k=rng.randint(3, 8))
        rng.shuffle(toks)
        if task_id == "tiny-crit":
            labels = {"E1": int("cell" in present), "E2": int("energy" in present)}
        else:
            labels = {"score": len(present)}
        out.append(Record(f"{prefix}{i}", task_id, " ".join(toks), labels))
    return out
