"""Generate the demo responses (``responses.csv``, ``new_task_responses.csv``) with a fixed seed.

Why generated: the demo must run on a fresh machine with data we may ship. We wrote, by hand, several
phrasings of every piece of evidence the rubrics look for (and of typical wrong ideas, fillers and
off-topic answers). Each response is a random combination of those pieces; its labels are computed from
the pieces it contains with the task's own rubric logic (analytic criteria one to one; ordinal scores with
the task file's scoring rule), so labels are honest by construction. Spelling noise imitates typed
handwritten answers. ``rater2_score`` is a second rater who agrees most of the time and otherwise is one
point off, more often on borderline answers - realistic, imperfect human agreement.

Run: ``python examples/demo/generate.py`` (rewrites both CSV files; same seed -> same bytes).
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240611
#: chance that a word of 5+ letters gets a typo; chance that the second rater disagrees by one point.
TYPO_RATE = 0.06
RATER2_DISAGREE = 0.12
RATER2_DISAGREE_BORDERLINE = 0.25

COMMON_MISSPELLINGS = {
    "because": ["becuase", "becase", "b/c"], "different": ["diffrent", "diferent"], "substance": ["substence", "substace"],
    "density": ["densty", "desnity"], "temperature": ["temprature", "tempature"], "conductor": ["conducter"],
    "experiment": ["expirement", "experament"], "their": ["there"], "doesn't": ["doesnt", "dosent"],
    "don't": ["dont"], "it's": ["its"], "through": ["threw", "thru"], "population": ["popluation", "populaton"],
    "probably": ["probly", "prolly"], "insulator": ["insolator", "insulater"], "aluminum": ["alumnium", "aluminun"],
    "rabbits": ["rabits"], "energy": ["enrgy"], "reflects": ["reflecs"], "properties": ["propertys", "properites"],
    "same": ["sam"], "would": ["wold", "woud"], "there": ["their"], "orbit": ["orbet"],
}


def typo(word: str, rng: random.Random) -> str:
    core = word.strip(".,;:!?")
    tail = word[len(core):]
    low = core.lower()
    if low in COMMON_MISSPELLINGS and rng.random() < 0.7:
        return rng.choice(COMMON_MISSPELLINGS[low]) + tail
    if len(core) < 5 or not core.isalpha():
        return word
    i = rng.randrange(1, len(core) - 1)
    kind = rng.random()
    if kind < 0.4:  # swap two letters
        core = core[:i] + core[i + 1] + core[i] + core[i + 2:]
    elif kind < 0.7:  # drop a letter
        core = core[:i] + core[i + 1:]
    else:  # double a letter
        core = core[:i] + core[i] + core[i:]
    return core + tail


def student_style(text: str, rng: random.Random, sloppy: float) -> str:
    """Typos, missing capitals and final periods, in proportion to how sloppy this student is."""
    words = [typo(w, rng) if rng.random() < TYPO_RATE * (1 + 3 * sloppy) else w for w in text.split()]
    out = " ".join(words)
    if rng.random() < sloppy:
        out = out.lower()
    if rng.random() < sloppy * 0.8:
        out = out.rstrip(".")
    return out


def compose(parts: list[str], rng: random.Random, openers: list[str], closers: list[str]) -> str:
    rng.shuffle(parts) if rng.random() < 0.3 else None
    text = " ".join(p if p.endswith((".", "?", "!")) else p + "." for p in parts)
    if rng.random() < 0.5:
        opener = rng.choice(openers)
        text = (opener + " " + text[0].lower() + text[1:]) if opener else text
    if rng.random() < 0.25:
        text = text + " " + rng.choice(closers)
    return text


# --- task 1: demo-gas (analytic E1-E4) ----------------------------------------------------------------------
GAS = {
    "E1": ["Gas A and Gas D could be the same substance", "A and D are probably the same gas",
           "I think gas A and gas D are the same thing", "Gases A and D might be the same substance",
           "The ones that are the same substance are A and D", "A and D could be the same kind of gas",
           "Gas D is most likely the same substance as gas A"],
    "E2": ["because they have the same density of 0.97 g/L", "they both melt at -210 and boil at -196",
           "their density, melting point and boiling point are all exactly the same",
           "the table shows the same melting point and boiling point for A and D",
           "A and D have matching densities and the same boiling point",
           "all there properties match, 0.97 density, -210 melting and -196 boiling"],
    "E3": ["The volume doesn't matter because density does not change with the amount of gas",
           "Even though D has 3 L and A has 1 L, density stays the same no matter how much you have",
           "Boiling point and melting point don't depend on how big the sample is",
           "Characteristic properties stay the same no matter the amount, so the different volumes don't matter",
           "Having more of a gas doesn't change its density, it's still 0.97"],
    "E4": ["B and C are different substances because their densities are different",
           "Gas B is a different gas since it has a much higher density and boiling point",
           "C has a different melting and boiling point so it is another substance",
           "B and C don't match anything else so they are different substances",
           "Gas B (1.98) and gas C (0.72) have different densities from each other and from A and D"],
    "wrong_claim": ["Gas A and C are the same substance", "B and C could be the same because they have no odor",
                    "None of them are the same because the volumes are different",
                    "All the gases are the same because none of them smell",
                    "A and D are different because D has more volume", "Gas C and D are the same gas"],
    "filler": ["Odor doesn't help because none of them have a smell", "I looked at the data table",
               "Gases can be told apart by their properties", "The data is at room temperature",
               "You have to compare the numbers in the table"],
    "offtopic": ["i dont know", "gas is air and air is everywhere", "The gases are invisible so you cant tell",
                 "they are all gases"],
}


def gen_gas(rng: random.Random, n: int) -> list[dict]:
    rows = []
    seen: set[str] = set()
    while len(rows) < n:
        sloppy = rng.random()
        lab = {"E1": 0, "E2": 0, "E3": 0, "E4": 0}
        parts: list[str] = []
        if rng.random() < 0.1:
            parts.append(rng.choice(GAS["offtopic"]))
        else:
            wants_e4 = rng.random() < 0.4
            if rng.random() < 0.65:
                lab["E1"] = 1
                claim = rng.choice(GAS["E1"])
                if rng.random() < 0.6:
                    lab["E2"] = 1
                    claim += " " + rng.choice(GAS["E2"])
                parts.append(claim)
                if rng.random() < (0.45 if lab["E2"] else 0.2):
                    lab["E3"] = 1
                    parts.append(rng.choice(GAS["E3"]))
            else:
                # a wrong claim that says B or C equals another gas would contradict E4 in the same answer
                claims = [c for c in GAS["wrong_claim"] if not (wants_e4 and ("B" in c or "C " in c))]
                parts.append(rng.choice(claims))
            if wants_e4:
                lab["E4"] = 1
                parts.append(rng.choice(GAS["E4"]))
            if rng.random() < 0.35:
                parts.append(rng.choice(GAS["filler"]))
        text = student_style(compose(parts, rng, ["", "My answer is that", "Based on the data,"], ["That is my answer."]),
                             rng, sloppy)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, **lab})
    return rows


# --- task 2: demo-ice (ordinal 0-3, rule over components) ----------------------------------------------------
ICE = {
    "valid_conclusion": ["The ice melted fastest on the aluminum and slowest on the foam",
                         "Metals made the ice melt faster than wood and foam did",
                         "The material of the block affects how fast the ice melts",
                         "Ice melts quicker on metal blocks than on the foam or wood",
                         "The aluminum block melted the ice in only 4 minutes but foam took 29, so metals melt ice faster"],
    "conduction_explanation": [
        "This is because metal is a good conductor of heat, so thermal energy moves from the block into the ice quickly",
        "Aluminum and steel conduct heat well but foam and wood are insulators so heat moves into the ice slowly",
        "Heat flows from the warmer block to the colder ice and metals let the heat flow faster",
        "Foam is an insulator so it doesn't transfer much heat to the ice, but metals are conductors",
        "The blocks are all room temperature but metal transfers its energy to the ice faster"],
    "improvements": ["They should repeat the test three times for each block",
                     "Measure the temperature of each block before starting",
                     "Use ice cubes with the same mass each time",
                     "Keep all the blocks in the same place so the room temperature is the same",
                     "Test more materials like glass or plastic to see the pattern"],
    "misconceptions": ["The metal was hotter than the foam so it melted the ice",
                       "Foam keeps the cold in because foam is cold",
                       "The cold from the ice went into the foam and stayed there",
                       "Wood soaks up the water so the ice melted slower"],
    "not_conclusion": ["Aluminum 4 minutes, steel 7, wood 21, foam 29", "The ice melted on all of the blocks"],
    "wrong_conclusion": ["The ice melted fastest on foam", "All of the blocks melted the ice about the same"],
    "offtopic": ["ice is cold", "I dont know what to write", "the ice melted"],
}


def ice_score(c: dict) -> int:
    """The scoring rule of tasks/demo/demo-ice.yaml, applied to the pieces a response contains."""
    n_imp = len(c["improvements"])
    if c["valid_conclusion"] and c["conduction_explanation"] and n_imp >= 1:
        return 3
    if c["valid_conclusion"] and (c["conduction_explanation"] or n_imp >= 1):
        return 2
    if c["valid_conclusion"] or c["conduction_explanation"]:
        return 1
    return 0


def gen_ice(rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        sloppy = rng.random()
        c = {"valid_conclusion": False, "conduction_explanation": False, "improvements": []}
        parts: list[str] = []
        if rng.random() < 0.1:
            parts.append(rng.choice(ICE["offtopic"]))
        else:
            if rng.random() < 0.7:
                c["valid_conclusion"] = True
                parts.append(rng.choice(ICE["valid_conclusion"]))
            else:
                parts.append(rng.choice(ICE["not_conclusion"] + ICE["wrong_conclusion"]))
            if rng.random() < 0.5:
                c["conduction_explanation"] = True
                parts.append(rng.choice(ICE["conduction_explanation"]))
            elif rng.random() < 0.5:
                parts.append(rng.choice(ICE["misconceptions"]))
            k = rng.choice([0, 0, 1, 1, 2])
            imps = rng.sample(ICE["improvements"], k)
            c["improvements"] = imps
            parts += imps
        text = student_style(compose(parts, rng, ["", "a.", "In conclusion,"], ["Thats why."]), rng, sloppy)
        if text in seen:
            continue
        seen.add(text)
        score = ice_score(c)
        rows.append({"text": text, "score": score, "_borderline": sloppy > 0.6 or len(parts) == 1})
    return rows


# --- task 3: demo-moon (ordinal 0-2) ------------------------------------------------------------------------
MOON = {
    "half_lit": ["The sun always lights up half of the moon",
                 "The moon doesn't make its own light, it reflects light from the sun and half of it is always lit",
                 "Half of the moon is always in sunlight", "Sunlight hits the side of the moon facing the sun"],
    "orbit_view": ["As the moon goes around the earth we see different parts of the lit side",
                   "The moon orbits earth about once a month so the angle we see it from keeps changing",
                   "Depending on where the moon is in its orbit we see more or less of the bright half",
                   "When the moon moves around the earth, different amounts of the sunny side face us"],
    "shadow": ["The earth's shadow covers part of the moon", "The shadow of the earth blocks sunlight from the moon",
               "Clouds cover part of the moon and that makes the phases"],
    "wrong": ["The moon changes its shape during the month", "The moon spins so we see different sides",
              "The moon gets smaller and bigger"],
    "filler": ["It takes about 29 days to go through all the phases",
               "The phases are new moon, crescent, quarter, gibbous and full", "A full moon is really bright"],
    "offtopic": ["the moon is made of rock", "I like the full moon", "idk"],
}


def moon_score(c: dict) -> int:
    """The scoring rule of tasks/demo/demo-moon.yaml."""
    if c["half_lit"] and c["orbit_view"] and not c["shadow_misconception"]:
        return 2
    if c["half_lit"] or c["orbit_view"]:
        return 1
    return 0


def gen_moon(rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        sloppy = rng.random()
        c = {"half_lit": False, "orbit_view": False, "shadow_misconception": False}
        parts: list[str] = []
        if rng.random() < 0.1:
            parts.append(rng.choice(MOON["offtopic"]))
        else:
            for comp, key, p in (("half_lit", "half_lit", 0.55), ("orbit_view", "orbit_view", 0.55),
                                 ("shadow_misconception", "shadow", 0.25)):
                if rng.random() < p:
                    c[comp] = True
                    parts.append(rng.choice(MOON[key]))
            if not parts or rng.random() < 0.2:
                parts.append(rng.choice(MOON["wrong"]))
            if rng.random() < 0.3:
                parts.append(rng.choice(MOON["filler"]))
        text = student_style(compose(parts, rng, ["", "The phases happen because", "I think"], ["That is why."]),
                             rng, sloppy)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "score": moon_score(c), "_borderline": c["shadow_misconception"] or sloppy > 0.7})
    return rows


# --- task 4: demo-foodweb (new task, ordinal 0-2) -----------------------------------------------------------
FOOD = {
    "rabbits_increase": ["The rabbit population will go up", "There will be a lot more rabbits",
                         "The number of rabbits increases", "Rabbits will multiply fast"],
    "grass_decreases": ["the grass will decrease", "there will be less grass", "the grass will get eaten up",
                        "the meadow will lose most of its grass"],
    "causal_reason": ["because nothing is eating the rabbits anymore and more rabbits eat more grass",
                      "since the foxes were their predator, so more rabbits survive and they eat more grass",
                      "because without the foxes fewer rabbits get eaten, and all those rabbits need grass to eat"],
    "wrong": ["The rabbits will die too because the disease spreads", "Nothing will change in the meadow",
              "The grass will grow more because the foxes are gone", "The rabbits will decrease"],
    "offtopic": ["foxes are cute", "I dont know", "the meadow is big"],
}


def food_score(c: dict) -> int:
    """The scoring rule of examples/demo/new_task.yaml."""
    if c["rabbits_increase"] and c["grass_decreases"] and c["causal_reason"]:
        return 2
    if c["rabbits_increase"] or c["grass_decreases"]:
        return 1
    return 0


def gen_food(rng: random.Random, n: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < n:
        sloppy = rng.random()
        c = {k: False for k in ("rabbits_increase", "grass_decreases", "causal_reason")}
        parts: list[str] = []
        if rng.random() < 0.1:
            parts.append(rng.choice(FOOD["offtopic"]))
        else:
            if rng.random() < 0.7:
                c["rabbits_increase"] = True
                parts.append(rng.choice(FOOD["rabbits_increase"]))
            if rng.random() < 0.6:
                c["grass_decreases"] = True
                parts.append(rng.choice(FOOD["grass_decreases"]))
            if parts and rng.random() < 0.55:
                c["causal_reason"] = True
                parts[-1] = parts[-1] + " " + rng.choice(FOOD["causal_reason"])
            if not parts or rng.random() < 0.15:
                parts.append(rng.choice(FOOD["wrong"]))
        text = student_style(compose(parts, rng, ["", "I predict that", "My prediction is"], ["The end."]), rng, sloppy)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "score": food_score(c), "_borderline": sloppy > 0.7})
    return rows


def second_rater(score: int, lo: int, hi: int, borderline: bool, rng: random.Random) -> int:
    p = RATER2_DISAGREE_BORDERLINE if borderline else RATER2_DISAGREE
    if rng.random() >= p:
        return score
    step = rng.choice([-1, 1])
    if not lo <= score + step <= hi:
        step = -step
    return score + step


def main(out_dir: Path = HERE) -> None:
    rng = random.Random(SEED)
    fields = ["response_id", "task_id", "text", "E1", "E2", "E3", "E4", "score", "rater2_score", "school"]
    rows = []
    for task_id, prefix, gen, n, rng_range in (
        ("demo-gas", "gas", gen_gas, 80, None),
        ("demo-ice", "ice", gen_ice, 80, (0, 3)),
        ("demo-moon", "moon", gen_moon, 80, (0, 2)),
    ):
        for i, r in enumerate(gen(rng, n), start=1):
            row = {"response_id": f"{prefix}-{i:03d}", "task_id": task_id, "text": r["text"],
                   "school": rng.choice(["north", "south"])}
            if rng_range is None:
                row.update({k: r[k] for k in ("E1", "E2", "E3", "E4")})
            else:
                row["score"] = r["score"]
                row["rater2_score"] = second_rater(r["score"], *rng_range, r["_borderline"], rng)
            rows.append(row)
    with (out_dir / "responses.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)

    new_rows = []
    for i, r in enumerate(gen_food(rng, 50), start=1):
        new_rows.append({"response_id": f"food-{i:03d}", "task_id": "demo-foodweb", "text": r["text"],
                         "score": r["score"], "rater2_score": second_rater(r["score"], 0, 2, r["_borderline"], rng),
                         "school": rng.choice(["north", "south"])})
    with (out_dir / "new_task_responses.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["response_id", "task_id", "text", "score", "rater2_score", "school"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(new_rows)
    print(f"{len(rows)} responses -> {out_dir / 'responses.csv'}; {len(new_rows)} -> new_task_responses.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
