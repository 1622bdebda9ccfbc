"""Four more task families for bench-quality, unlike demo_tasks' five: did the defaults only fit
the tasks they were tuned on?

Seeded and offline like demo_tasks (each answer a deterministic function of its prompt), 150
records each (120 train / 30 validation at the bench's validation fraction):

    contact-extraction  JSON with optional fields: keys present only when the text states them
    product-routing     12 labels with imbalanced frequencies (34 of 150 down to 5)
    unit-format         numbers and units to one style (thousands separators, unit symbols)
    bilingual-polite    a short polite rewrite, in English or French, answered in the same language

Plus `random_labels`, issue 18's check: 4 labels drawn at random, independent of the text, so
nothing is there to learn and the verdict must be noGain naming a baseline.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from .demo_tasks import (_MONTHS, _NAMES, DEFAULT_RECORDS, GENERATORS, DemoTask, _unique)

# ---- contact-extraction (JSON, optional fields) -------------------------------------------

_CITIES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Quebec", "Perth", "Tallinn", "Dakar",
           "Hanoi", "Bogota", "Zagreb"]
_COMPANIES = ["Acme", "Globex", "Initech", "Hooli", "Vandelay", "Tyrell", "Soylent", "Wonka"]
_ROLES = ["engineer", "designer", "accountant", "nurse", "teacher", "pilot", "chef", "lawyer"]
CONTACT_KEYS = ("name", "company", "role", "city", "phone")


def contact_extraction(n: int = DEFAULT_RECORDS, seed: int = 11) -> DemoTask:
    """Name and company always; role, city and phone each in about half the texts. The answer
    holds only the keys the text states, in a fixed order (leaving one out is part of the task)."""
    rng = random.Random(seed)

    def make() -> tuple[str, str]:
        f: dict[str, str] = {"name": f"{rng.choice(_NAMES)} {rng.choice(_NAMES)}son",
                             "company": rng.choice(_COMPANIES)}
        if rng.random() < 0.5:
            f["role"] = rng.choice(_ROLES)
        if rng.random() < 0.5:
            f["city"] = rng.choice(_CITIES)
        if rng.random() < 0.5:
            f["phone"] = f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        parts = [rng.choice(["{name} works at {company}.", "Met {name} from {company}.",
                             "{company} contact: {name}."]).format(**f)]
        if "role" in f:
            parts.append(rng.choice(["They are a {role}.", "Job: {role}."]).format(**f))
        if "city" in f:
            parts.append(rng.choice(["Based in {city}.", "Lives in {city}."]).format(**f))
        if "phone" in f:
            parts.append(rng.choice(["Call {phone}.", "Phone: {phone}."]).format(**f))
        answer = {k: f[k] for k in CONTACT_KEYS if k in f}
        return " ".join(parts), json.dumps(answer, ensure_ascii=False)

    pairs = _unique(n, make, rng)
    instruction = ("Extract the contact as JSON with the keys name, company, role, city, phone; "
                   "leave out any key the text does not state.")
    records = [{"instruction": instruction, "input": p, "output": a} for p, a in pairs]
    return DemoTask("contact-extraction", "extraction to JSON (optional fields)",
                    "Turn a note about a person into JSON, only with the fields it states.",
                    "contacts.jsonl", records)


# ---- product-routing (12 imbalanced labels) ------------------------------------------------

_DEPARTMENTS: dict[str, list[str]] = {
    "grocery": ["rice", "olive oil", "pasta", "coffee beans", "flour", "honey"],
    "electronics": ["phone charger", "laptop", "headphones", "smart watch", "tablet", "router"],
    "clothing": ["winter jacket", "jeans", "wool socks", "summer dress", "raincoat", "scarf"],
    "garden": ["lawn mower", "garden hose", "flower seeds", "rake", "plant pots", "hedge trimmer"],
    "toys": ["puzzle", "teddy bear", "toy train", "building blocks", "kite", "doll house"],
    "books": ["cookbook", "novel", "atlas", "dictionary", "comic book", "poetry collection"],
    "pharmacy": ["painkillers", "sunscreen", "bandages", "cough syrup", "vitamins", "thermometer"],
    "pets": ["dog food", "cat litter", "bird cage", "fish tank", "dog leash", "hamster wheel"],
    "automotive": ["motor oil", "wiper blades", "car battery", "tire pump", "seat covers", "jumper cables"],
    "music": ["guitar strings", "drum sticks", "piano stool", "violin bow", "ukulele", "metronome"],
    "sports": ["tennis racket", "yoga mat", "football", "bike helmet", "dumbbells", "swim goggles"],
    "office": ["printer ink", "stapler", "paper clips", "desk organiser", "envelopes", "binder"],
}
# Records per label out of 150: most common 34, rarest 5 (sums to 150).
ROUTING_COUNTS = (34, 24, 18, 14, 11, 10, 8, 7, 7, 6, 6, 5)
_ASKS = ["Where do I find {item}?", "Which aisle has {item}?", "I am looking for {item}.",
         "Do you sell {item}?", "Need {item} for {name}, where should I go?",
         "My {month} list says {item}. Which department?", "Can someone help me find {item}?"]


def _scaled(counts: tuple[int, ...], n: int) -> list[int]:
    """`counts` scaled to sum to n (largest remainder), at least 1 each."""
    total = sum(counts)
    raw = [c * n / total for c in counts]
    out = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[: max(0, n - sum(out))]:
        out[i] += 1
    return out


def product_routing(n: int = DEFAULT_RECORDS, seed: int = 12) -> DemoTask:
    rng = random.Random(seed)
    labels = list(_DEPARTMENTS)
    plan = [lab for lab, k in zip(labels, _scaled(ROUTING_COUNTS, n)) for _ in range(k)]

    def make(label: str) -> tuple[str, str]:
        ask = rng.choice(_ASKS).format(item=rng.choice(_DEPARTMENTS[label]),
                                       name=rng.choice(_NAMES), month=rng.choice(_MONTHS))
        return ask, label

    pairs = _unique(len(plan), make, rng, balance=plan)
    instruction = ("Route the shopper's question to one department: " + ", ".join(labels)
                   + ". Answer with the department only.")
    records = [{"instruction": instruction, "input": p, "output": a} for p, a in pairs]
    return DemoTask("product-routing", "classification (12 imbalanced labels)",
                    "Route a shopper's question to one of 12 departments (34 of 150 to the "
                    "largest, 5 to the smallest).", "routing.csv", records, stratify_by="output")


# ---- unit-format (numbers and units) ---------------------------------------------------------

_UNITS = [("kilograms", "kg"), ("grams", "g"), ("metres", "m"), ("kilometres", "km"),
          ("litres", "L"), ("millilitres", "mL"), ("seconds", "s"), ("hours", "h"),
          ("megabytes", "MB"), ("degrees Celsius", "°C"), ("percent", "%"), ("volts", "V")]
_CONTEXTS = ["The sample measured {q}.", "Reading: {q}", "We logged {q} yesterday.",
             "Total so far is {q}.", "{q} according to the report.", "Limit set to {q}."]


def format_number(value: float, decimals: int) -> str:
    """Thousands separated by commas, `decimals` places, trailing zeros (and a bare point) cut."""
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def unit_format(n: int = DEFAULT_RECORDS, seed: int = 13) -> DemoTask:
    """Write the quantity as `1,234.5 kg`. Inputs vary the number's style (plain, spaced
    thousands, trailing zeros) and spell the unit out; the answer is one canonical form."""
    rng = random.Random(seed)

    def make() -> tuple[str, str]:
        long, symbol = rng.choice(_UNITS)
        decimals = rng.choice([0, 0, 1, 2])
        value = round(rng.uniform(0, 10 ** rng.randint(1, 6)), decimals)
        plain = f"{value:.{decimals}f}"
        style = rng.choice(["plain", "spaced", "padded"])
        if style == "spaced":
            whole, _, frac = plain.partition(".")
            shown = f"{int(whole):,}".replace(",", " ") + (f".{frac}" if frac else "")
        elif style == "padded":
            shown = f"{value:.{decimals + 1}f}"
        else:
            shown = plain
        answer = format_number(value, decimals) + ("" if symbol == "%" else " ") + symbol
        return rng.choice(_CONTEXTS).format(q=f"{shown} {long}"), answer

    pairs = _unique(n, make, rng)
    system = ("Write the quantity in the text in standard form: comma thousands separators, no "
              "trailing zeros, the unit symbol (kg, g, m, km, L, mL, s, h, MB, °C, %, V).")
    records = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": p},
                             {"role": "assistant", "content": a}]} for p, a in pairs]
    return DemoTask("unit-format", "number and unit formatting",
                    "Normalise a quantity to `1,234.5 kg` style.", "units.jsonl", records)


# ---- bilingual-polite (a short rewrite in two languages) -----------------------------------

# (English imperative, English infinitive, French imperative, French infinitive)
_ACTIONS = [
    ("close the window", "close the window", "ferme la fenêtre", "fermer la fenêtre"),
    ("send the invoice", "send the invoice", "envoie la facture", "envoyer la facture"),
    ("call the client", "call the client", "appelle le client", "appeler le client"),
    ("book the room", "book the room", "réserve la salle", "réserver la salle"),
    ("print the contract", "print the contract", "imprime le contrat", "imprimer le contrat"),
    ("check the numbers", "check the numbers", "vérifie les chiffres", "vérifier les chiffres"),
    ("answer the email", "answer the email", "réponds au courriel", "répondre au courriel"),
    ("clean the kitchen", "clean the kitchen", "nettoie la cuisine", "nettoyer la cuisine"),
    ("update the slides", "update the slides", "mets à jour les diapositives",
     "mettre à jour les diapositives"),
    ("water the plants", "water the plants", "arrose les plantes", "arroser les plantes"),
    ("lock the door", "lock the door", "ferme la porte à clé", "fermer la porte à clé"),
    ("order more paper", "order more paper", "commande plus de papier", "commander plus de papier"),
]
_WHEN = [("", ""), (" today", " aujourd'hui"), (" before noon", " avant midi"),
         (" tomorrow", " demain"), (" this evening", " ce soir")]
_PUSH = [("", ""), (" now", " maintenant"), (" right away", " tout de suite")]
_MARKS = ["!", ".", "!!", ""]


def bilingual_polite(n: int = DEFAULT_RECORDS, seed: int = 14) -> DemoTask:
    """A curt order in English or French -> one polite question in the same language."""
    rng = random.Random(seed)

    def make() -> tuple[str, str]:
        en_imp, en_inf, fr_imp, fr_inf = rng.choice(_ACTIONS)
        (en_when, fr_when), (en_push, fr_push) = rng.choice(_WHEN), rng.choice(_PUSH)
        mark = rng.choice(_MARKS)
        if rng.random() < 0.5:
            curt = f"{en_imp[0].upper()}{en_imp[1:]}{en_when}{en_push}{mark}"
            return curt, f"Could you {en_inf}{en_when}, please?"
        curt = f"{fr_imp[0].upper()}{fr_imp[1:]}{fr_when}{fr_push}{mark}"
        return curt, f"Pourriez-vous {fr_inf}{fr_when}, s'il vous plaît ?"

    pairs = _unique(n, make, rng)
    system = ("Rewrite the order as one polite question in the language it is written in "
              "(English or French). Drop any pressure.")
    records = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": p},
                             {"role": "assistant", "content": a}]} for p, a in pairs]
    return DemoTask("bilingual-polite", "short rewrite (English or French)",
                    "Rewrite a curt order as a polite question, in its own language.",
                    "polite-bilingual.jsonl", records)


# ---- random-labels (issue 18: nothing to learn) ----------------------------------------------

RANDOM_LABELS = ("billing", "bug", "account", "feature")


def random_labels(n: int = DEFAULT_RECORDS, seed: int = 18) -> DemoTask:
    """Tickets of the triage kind whose label is drawn at random, independent of the text."""
    rng = random.Random(seed)
    topics = [w for words in _DEPARTMENTS.values() for w in words]

    def make() -> tuple[str, str]:
        text = (f"Ticket from {rng.choice(_NAMES)} about the {rng.choice(topics)}, "
                f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}.")
        return text, rng.choice(RANDOM_LABELS)

    pairs = _unique(n, make, rng)
    instruction = ("Classify the support ticket as one of: billing, bug, account, feature. "
                   "Answer with the label only.")
    records = [{"instruction": instruction, "input": p, "output": a} for p, a in pairs]
    return DemoTask("random-labels", "classification with random labels (nothing to learn)",
                    "Labels drawn at random: the verdict must be noGain.", "random.jsonl", records)


NEW_FAMILIES: dict[str, Callable[..., DemoTask]] = {
    "contact-extraction": contact_extraction,
    "product-routing": product_routing,
    "unit-format": unit_format,
    "bilingual-polite": bilingual_polite,
}
CHECKS: dict[str, Callable[..., DemoTask]] = {"random-labels": random_labels}
ALL_GENERATORS: dict[str, Callable[..., DemoTask]] = {**GENERATORS, **NEW_FAMILIES, **CHECKS}
FAMILIES = tuple(GENERATORS) + tuple(NEW_FAMILIES)  # the nine the bench's target is about


def generate(name: str, n: int = DEFAULT_RECORDS) -> DemoTask:
    return ALL_GENERATORS[name](n)
