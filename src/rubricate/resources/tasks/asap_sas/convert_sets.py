"""Regenerate ``asap-sas-{1..10}.yaml`` from the official item documents in ``../shared/data/asap-sas/sets``.

Kept so that the provenance of every task file is reproducible: question, reading passage, grade, subject
and the item-specific score-level descriptions are copied from ``setN.md``; everything else in the
document (possible correct responses, key elements, the general rubric) goes into ``rubric.notes``.
Components and scoring rules for sets 2, 5 and 9 (the AutoSCORE items) are written by hand below, from
``autoscore-prompts/DataSet{2,5,9}/rubric.txt``.

Usage: ``python tasks/asap_sas/convert_sets.py [SHARED_DATA_DIR]`` (writes next to this script).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent  # src/rubricate/resources/tasks/asap_sas (tasks/ links here)
LEVEL = re.compile(r"^(?:Score(?: Point)? (\d)|(\d) points?)$")


def sections(md: str) -> list[tuple[str, str]]:
    """Split a document on '## ' headings -> [(heading, body)], the part before the first heading dropped."""
    out: list[tuple[str, str]] = []
    head, body = None, []
    for line in md.splitlines():
        if line.startswith("## "):
            if head is not None:
                out.append((head, "\n".join(body).strip()))
            head, body = line[3:].strip(), []
        else:
            body.append(line)
    if head is not None:
        out.append((head, "\n".join(body).strip()))
    return out


def clean(text: str) -> str:
    """Drop image links (the media files are not shipped; their transcriptions stay), tabs and blank runs."""
    lines = [ln.lstrip("\t").rstrip() for ln in text.splitlines() if not ln.strip().startswith("![")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def meta_table(body: str) -> dict[str, str]:
    out = {}
    for ln in body.splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].endswith(":"):
            out[cells[0][:-1]] = cells[1]
    return out


# --- hand-written components and rules (AutoSCORE items) ---------------------------------------------------
COMPONENTS: dict[int, dict[str, Any]] = {
    2: {
        "components": [
            {"id": "valid_conclusion", "type": "boolean",
             "description": "The response draws a conclusion supported by the data table, e.g. plastic B stretched "
                            "the most, A the least, the plastics differ in stretchability, or no valid conclusion "
                            "can be drawn because of procedural errors."},
            {"id": "design_improvements", "type": "list",
             "description": "Distinct, correct ways to improve the experimental design or validity, e.g. state the "
                            "starting lengths, use samples of equal thickness/size, run more trials, state the "
                            "number/mass of weights. Count each distinct improvement once; vague wishes "
                            "('be more careful') do not count."},
        ],
        "scoring_rules": [
            {"kind": "cases", "scale": "score", "default": 0, "cases": [
                {"score": 3, "when": "valid_conclusion and len(design_improvements) >= 2"},
                {"score": 2, "when": "(valid_conclusion and len(design_improvements) == 1) or "
                                     "len(design_improvements) >= 2"},
                {"score": 1, "when": "valid_conclusion or len(design_improvements) == 1"},
            ]},
        ],
    },
    5: {
        "components": [
            {"id": f"ke{i}_{name}", "type": "boolean", "description": desc}
            for i, (name, desc) in enumerate([
                ("exits_nucleus", "mRNA exits the nucleus via a nuclear pore."),
                ("travels_to_ribosome", "mRNA travels through the cytoplasm to the ribosome or enters the rough "
                                        "endoplasmic reticulum."),
                ("codons_read", "mRNA bases are read in triplets called codons (by rRNA)."),
                ("trna_anticodon", "tRNA carrying the complementary anticodon (U=A, C=G) recognizes the "
                                   "complementary codon of the mRNA."),
                ("amino_acids_bonded", "The corresponding amino acids on the other end of the tRNA are bonded to "
                                       "adjacent tRNA's amino acids."),
                ("new_amino_acid", "A new corresponding amino acid is added to the tRNA."),
                ("start_codon", "Amino acids are linked together to make a protein beginning with a START codon in "
                                "the P site (initiation)."),
                ("stop_codon", "Amino acids continue to be linked until a STOP codon is read on the mRNA in the A "
                               "site (elongation and termination)."),
            ], start=1)
        ],
    },
    9: {
        "components": [
            {"id": "organization_strategy", "type": "text",
             "description": "The organizational strategy the student names (e.g. sections with subheadings, "
                            "question-and-answer headings, problem and solution, cause and effect, general to "
                            "specific), quoted or paraphrased; empty if none is named."},
            {"id": "strategy_accurate", "type": "boolean",
             "description": "The named strategy accurately describes how 'Orbiting Junk' is organized (it is "
                            "text-based, not a generic claim)."},
            {"id": "supporting_details", "type": "list",
             "description": "Specific details from the article that support the strategy (a subheading such as "
                            "'What Is Space Junk?', 'Crash Course', 'Little Bits, But a Big Deal', or what a "
                            "section does). Count each distinct detail once; details unrelated to the "
                            "organization do not count."},
        ],
        "scoring_rules": [
            {"kind": "cases", "scale": "score", "default": 0, "cases": [
                {"score": 2, "when": "strategy_accurate and len(supporting_details) >= 2"},
                {"score": 1, "when": "strategy_accurate or len(supporting_details) >= 1"},
            ]},
        ],
    },
}
COMPONENTS[5]["scoring_rules"] = [
    {"kind": "count_map", "scale": "score", "count": [c["id"] for c in COMPONENTS[5]["components"]],
     "map": {"4+": 3, "3": 2, "1-2": 1}, "default": 0},
]


def convert(n: int, shared: Path) -> dict[str, Any]:
    md = (shared / "asap-sas" / "sets" / f"set{n}.md").read_text(encoding="utf-8")
    title = re.search(r"^# ASAP-SAS essay set \d+: (.+)$", md, re.M).group(1).strip()
    secs = sections(md)
    meta = meta_table(next(b for h, b in secs if h.startswith("Data Set #")))
    prompts = [i for i, (h, _) in enumerate(secs) if h.startswith("Prompt")]
    q_idx = prompts[-1]
    context = None
    passage = [b for h, b in secs if h.startswith("Reading Passage")]
    if passage:
        context = clean(passage[0])
    elif len(prompts) > 1:  # set 8: the story sits under a first 'Prompt' heading
        context = clean(secs[prompts[0]][1])
    question = clean(secs[q_idx][1])

    levels: dict[int, str] = {}
    level_idx: dict[int, int] = {}
    for i, (h, b) in enumerate(secs):
        m = LEVEL.match(h)
        if m and i > q_idx:
            score = int(m.group(1) or m.group(2))
            levels[score] = clean(b).replace("\n\n-or-\n\n", "\n-or-\n")
            level_idx[score] = i  # the last occurrence is the item-specific rubric
    final = set(level_idx.values())
    notes = []
    for i, (h, b) in enumerate(secs):
        if i <= q_idx or i in final or (not b.strip() and not LEVEL.match(h)):
            continue
        label = f"General rubric, {h}" if LEVEL.match(h) else h
        notes.append(f"### {label}\n\n{clean(b)}" if b.strip() else f"### {label}")
    lo, hi = (int(x) for x in re.findall(r"\d+", meta["Rubric range"])[:2])
    task: dict[str, Any] = {
        "id": f"asap-sas-{n}",
        "title": title.replace(" Item", ""),
        "question": question,
    }
    if context:
        task["context"] = context
    task["grade"] = int(meta["Grade level"])
    task["subject"] = meta["Subject"]
    rubric: dict[str, Any] = {
        "scales": [{"id": "score", "name": "holistic score (Score1)", "min": lo, "max": hi,
                    "levels": [{"score": s, "description": levels[s]} for s in sorted(levels)]}],
    }
    rubric.update(COMPONENTS.get(n, {}))
    autoscore = shared / "asap-sas" / "autoscore-prompts" / f"DataSet{n}" / "rubric.txt"
    if n == 9 and autoscore.is_file():  # AutoSCORE's refined wording of the 0-2 levels for this item
        text = autoscore.read_text(encoding="utf-8").split("## Organization of Article Item")[0]
        text = text.replace("## Rubric for Organization of Article", "").strip()
        notes.append("### AutoSCORE rubric wording (AI4STEM-Education-Center/AutoSCORE, MIT)\n\n" + clean(text))
    rubric["notes"] = "\n\n".join(notes) or None
    task["rubric"] = rubric
    task["metadata"] = {
        "source": f"ASAP-SAS Data Set #{n} ReadMeFirst (shared/data/asap-sas/sets/set{n}.md)",
        "response_type": meta.get("Type of response"),
        "dataset_loader": "asap-sas",
        **({"anchor_annotations": f"shared/data/asap-sas/sets/anchors/set{n}_anchor_annotations.txt"}
           if (shared / "asap-sas" / "sets" / "anchors" / f"set{n}_anchor_annotations.txt").is_file() else {}),
    }
    return task


def _dump(data: Any) -> str:
    def lit(dumper: yaml.Dumper, s: str) -> yaml.Node:
        style = "|" if "\n" in s else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    class D(yaml.SafeDumper):
        pass

    D.add_representer(str, lit)
    return yaml.dump(data, Dumper=D, sort_keys=False, allow_unicode=True, width=110)


def main() -> None:
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[5] / "shared" / "data"
    for n in range(1, 11):
        task = convert(n, shared)
        header = (f"# ASAP-SAS item {n}, generated by convert_sets.py from the official item document;\n"
                  f"# loader: rubricate.data.loaders.load_asap_sas (labels: score = Score1, rater2: Score2).\n")
        (HERE / f"asap-sas-{n}.yaml").write_text(header + _dump(task), encoding="utf-8")
        print(f"asap-sas-{n}.yaml")


if __name__ == "__main__":
    main()
