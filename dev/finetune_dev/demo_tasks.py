"""Synthetic tasks for `make demo` and `make bench-quality`: seeded, offline, 100-200 records each.

Why synthetic: the demo and the quality benchmark must run on a fresh machine with no dataset
downloads, and each task's answer must be a deterministic function of its prompt, so exact match
is a fair score (a model that learned the task can reach 100%). The kinds differ on purpose:
few-label classification with little answer text (the hard case in DESIGN.md's pitfalls),
extraction to JSON, date normalisation (date-like outputs the JSON loader would mistype),
a short rewrite, and yes/no questions. They also use different file formats (CSV, JSONL in
alpaca, chat and input/output shapes) so the demo exercises format detection.

`write_tasks()` uploads each task's data to a bucket (any Storage URI) and writes one
FineTuneTask YAML per task that points at it.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_operator import API_VERSION, KIND
from finetune_contract.storage import Storage, join

DEFAULT_RECORDS = 150
VALIDATION_FRACTION = 0.2  # 150 records -> 120 train / 30 validation, the size DESIGN.md measured

# ---- vocabularies ------------------------------------------------------------------------

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal",
          "Lea", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vera"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_FRUITS = ["apple", "pear", "kiwi", "plum", "mango", "peach", "lemon", "cherry", "grape", "fig",
           "banana", "melon", "lime", "apricot", "orange", "papaya"]
_VENDORS = ["Acme Corp", "Globex", "Initech", "Umbrella Ltd", "Stark Supply", "Wayne Goods",
            "Hooli", "Vandelay Imports", "Soylent Co", "Tyrell Parts"]
_ITEMS = ["desk lamp", "office chair", "usb cable", "monitor stand", "notebook", "stapler",
          "keyboard", "water bottle", "headset", "whiteboard", "printer paper", "desk fan"]
_CURRENCIES = ["EUR", "USD", "GBP", "CHF"]

# ticket-triage: the label follows from the complaint, never from a single shared keyword.
_TICKETS: dict[str, list[str]] = {
    "billing": ["I was charged twice for my {plan} plan", "my invoice for {month} shows the wrong amount",
                "please refund the payment I made in {month}", "why did my card get charged after I cancelled",
                "the {plan} plan costs more than the price on your site", "I need a receipt for my {month} payment"],
    "bug": ["the app crashes when I open the {page} page", "the {page} page shows an error since the update",
            "exporting to {fmt} produces an empty file", "the {page} screen freezes after a few seconds",
            "buttons on the {page} page do nothing when clicked", "search returns no results for {fmt} files"],
    "account": ["I cannot log in since I reset my password", "please change the email on my account",
                "my account was locked after too many sign-in attempts", "how do I delete my account",
                "I never received the verification email", "please add {name} as a second user on my account"],
    "feature": ["it would be great if you could add {fmt} export", "please support dark mode on the {page} page",
                "could you add a shortcut to open the {page} page", "I would love a {fmt} import option",
                "please let me schedule reports every {month}", "add a way to share the {page} page with {name}"],
}
_OPENERS = ["", "Hi team, ", "Hello, ", "Good morning. ", "Hey, ", "Dear support, "]
_CLOSERS = ["", " Thanks.", " Thank you!", " Regards, {name}.", " Please help.", " Cheers, {name}."]
_PLANS = ["basic", "pro", "team", "family", "business"]
_PAGES = ["settings", "billing", "dashboard", "profile", "reports", "inbox", "calendar"]
_FORMATS = ["CSV", "PDF", "Excel", "JSON", "XML"]

_REQUESTS = ["send me the report by Friday", "call the client before noon", "update the slides for Monday",
             "book a room for the team meeting", "check the numbers in the budget", "share the notes from today",
             "fix the typo on the front page", "order more printer paper", "review my pull request",
             "reply to the supplier", "move the call to Thursday", "print the contract for {name}",
             "email {name} the new schedule", "sign the form for {name}", "remind {name} about the deadline",
             "clean up the shared folder", "test the login page again", "translate the memo for {name}",
             "rename the project folder", "archive the old tickets"]
_URGENCY = ["", " now", " right now", " immediately", " asap", " today, no excuses"]
_ENDINGS = [".", "!", "!!", ""]


@dataclass(frozen=True)
class DemoTask:
    """One synthetic task: its records and the file they are uploaded as."""

    name: str
    kind: str
    summary: str
    filename: str
    records: list[dict[str, Any]]
    stratify_by: str | None = None
    extra_spec: dict[str, Any] = field(default_factory=dict)

    def data_bytes(self) -> bytes:
        if self.filename.endswith(".csv"):
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(self.records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.records)
            return buf.getvalue().encode("utf-8")
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records).encode("utf-8")


def _unique(n: int, make: Callable[..., tuple[str, str]], rng: random.Random,
            balance: list[str] | None = None) -> list[tuple[str, str]]:
    """n distinct (prompt, answer) pairs; with `balance`, answers cycle through its labels."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > n * 200:
            raise RuntimeError(f"cannot generate {n} distinct records")
        prompt, answer = make() if balance is None else make(balance[len(out) % len(balance)])
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append((prompt, answer))
    rng.shuffle(out)
    return out


def _fill(template: str, rng: random.Random) -> str:
    return template.format(plan=rng.choice(_PLANS), month=rng.choice(_MONTHS), page=rng.choice(_PAGES),
                           fmt=rng.choice(_FORMATS), name=rng.choice(_NAMES))


# ---- generators ---------------------------------------------------------------------------

TRIAGE_INSTRUCTION = ("Classify the support ticket as one of: billing, bug, account, feature. "
                      "Answer with the label only.")


def ticket_triage(n: int = DEFAULT_RECORDS, seed: int = 1) -> DemoTask:
    rng = random.Random(seed)

    def make(label: str) -> tuple[str, str]:
        body = _fill(rng.choice(_TICKETS[label]), rng)
        text = _fill(rng.choice(_OPENERS), rng) + body[0].upper() + body[1:] + "." + _fill(rng.choice(_CLOSERS), rng)
        return text.strip(), label

    pairs = _unique(n, make, rng, balance=sorted(_TICKETS))
    records = [{"instruction": TRIAGE_INSTRUCTION, "input": p, "output": a} for p, a in pairs]
    return DemoTask("ticket-triage", "classification (4 labels, one-word answers)",
                    "Route a support ticket to billing, bug, account or feature.",
                    "tickets.csv", records, stratify_by="output")


def invoice_extraction(n: int = DEFAULT_RECORDS, seed: int = 2) -> DemoTask:
    rng = random.Random(seed)
    templates = [
        "Invoice {inv} from {vendor}: {qty} x {item} at {price} {cur} each.",
        "{vendor} billed us {qty} {item} ({price} {cur} per unit), invoice number {inv}.",
        "Please pay invoice {inv}. Supplier: {vendor}. Line: {item}, quantity {qty}, unit price {cur} {price}.",
        "We received {qty} x {item} from {vendor} for {price} {cur} apiece; reference {inv}.",
    ]

    def make() -> tuple[str, str]:
        fields = {"inv": f"INV-{rng.randint(1000, 9999)}", "vendor": rng.choice(_VENDORS),
                  "qty": rng.randint(1, 40), "item": rng.choice(_ITEMS),
                  "price": f"{rng.randint(1, 300)}.{rng.choice(['00', '50', '99', '25'])}",
                  "cur": rng.choice(_CURRENCIES)}
        answer = json.dumps({"invoice": fields["inv"], "vendor": fields["vendor"], "item": fields["item"],
                             "quantity": fields["qty"], "unit_price": fields["price"],
                             "currency": fields["cur"]})
        return rng.choice(templates).format(**fields), answer

    pairs = _unique(n, make, rng)
    instruction = ("Extract the invoice as JSON with the keys invoice, vendor, item, quantity, "
                   "unit_price, currency.")
    records = [{"instruction": instruction, "input": p, "output": a} for p, a in pairs]
    return DemoTask("invoice-extraction", "extraction to JSON (six fields)",
                    "Turn a free-text invoice line into a fixed JSON object.",
                    "invoices.jsonl", records)


def _polite(request: str) -> str:
    return f"Could you please {request}?"


def polite_rewrite(n: int = DEFAULT_RECORDS, seed: int = 3) -> DemoTask:
    rng = random.Random(seed)

    def make() -> tuple[str, str]:
        request = _fill(rng.choice(_REQUESTS), rng)
        rude = request[0].upper() + request[1:] if rng.random() < 0.5 else request
        rude += rng.choice(_URGENCY) + rng.choice(_ENDINGS)
        return rude, _polite(request)

    pairs = _unique(n, make, rng)
    system = "Rewrite the message as one short, polite request. Drop any pressure."
    records = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": p},
                             {"role": "assistant", "content": a}]} for p, a in pairs]
    return DemoTask("polite-rewrite", "short rewrite (tone)",
                    "Rewrite a curt demand as a polite request.", "requests.jsonl", records)


def date_normalise(n: int = DEFAULT_RECORDS, seed: int = 4) -> DemoTask:
    rng = random.Random(seed)
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
    styles = [
        lambda d, m, y: f"{_MONTHS[m - 1]} {d}, {y}",
        lambda d, m, y: f"{d} {_MONTHS[m - 1]} {y}",
        lambda d, m, y: f"{_MONTHS[m - 1][:3]} {d} {y}",
        lambda d, m, y: f"the {d}{suffix.get(d, 'th')} of {_MONTHS[m - 1]}, {y}",
        lambda d, m, y: f"{y}/{m:02d}/{d:02d}",
    ]
    leads = ["The meeting is on {date}.", "Delivered {date}.", "Due date: {date}", "Signed on {date}.",
             "We met on {date}.", "{date}"]

    def make() -> tuple[str, str]:
        y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
        text = rng.choice(leads).format(date=rng.choice(styles)(d, m, y))
        return f"Write the date in this text as YYYY-MM-DD: {text}", f"{y}-{m:02d}-{d:02d}"

    pairs = _unique(n, make, rng)
    records = [{"input": p, "output": a} for p, a in pairs]
    return DemoTask("date-normalise", "normalisation (dates to ISO 8601)",
                    "Find the date in a sentence and write it as YYYY-MM-DD.", "dates.jsonl", records)


def basket_yes_no(n: int = DEFAULT_RECORDS, seed: int = 5) -> DemoTask:
    rng = random.Random(seed)

    def make(label: str) -> tuple[str, str]:
        basket = rng.sample(_FRUITS, rng.randint(3, 6))
        asked = rng.choice(basket) if label == "yes" else rng.choice([f for f in _FRUITS if f not in basket])
        prompt = (f"Basket: {', '.join(basket)}. Is there a {asked} in the basket? "
                  "Answer yes or no.")
        return prompt, label

    pairs = _unique(n, make, rng, balance=["yes", "no"])
    records = [{"prompt": p, "completion": a} for p, a in pairs]
    return DemoTask("basket-yes-no", "yes/no questions", "Answer whether a fruit is in a listed basket.",
                    "baskets.jsonl", records, stratify_by="completion")


GENERATORS: dict[str, Callable[..., DemoTask]] = {
    "ticket-triage": ticket_triage,
    "invoice-extraction": invoice_extraction,
    "polite-rewrite": polite_rewrite,
    "date-normalise": date_normalise,
    "basket-yes-no": basket_yes_no,
}
DEMO_TASKS = ("invoice-extraction", "ticket-triage", "polite-rewrite")
BENCH_TASKS = ("ticket-triage", "invoice-extraction", "date-normalise", "polite-rewrite", "basket-yes-no")


def generate(name: str, n: int = DEFAULT_RECORDS) -> DemoTask:
    return GENERATORS[name](n)


# ---- upload + FineTuneTask YAML -----------------------------------------------------------


def task_document(task: DemoTask, *, data_uri: str, output_uri: str, base_model: str,
                  endpoint: str = "", namespace: str = "demo", name: str | None = None,
                  training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FineTuneTask for one task (plain dict, camelCase, as `kubectl apply` would take it)."""
    dataset: dict[str, Any] = {"uri": data_uri, "validationFraction": VALIDATION_FRACTION,
                               "seed": 42, "minSamples": 100}
    if task.stratify_by:
        dataset["stratifyBy"] = task.stratify_by
    spec: dict[str, Any] = {"baseModel": {"name": base_model}, "dataset": dataset,
                            "output": {"uri": output_uri},
                            "storage": {"endpoint": endpoint},
                            "resources": {"gpu": 0}}
    if training:
        spec["training"] = training
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name or task.name, "namespace": namespace}, "spec": spec}


def write_tasks(tasks: list[DemoTask], storage: Storage, *, data_root: str, output_uri: str,
                base_model: str, yaml_dir: str | Path, endpoint: str = "", namespace: str = "demo",
                training: dict[str, Any] | None = None, suffix: str = "") -> list[Path]:
    """Upload each task's data under `data_root/<task>/` and write `<yaml_dir>/<task><suffix>.yaml`."""
    out_dir = Path(yaml_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage.ensure_bucket(data_root)
    storage.ensure_bucket(output_uri)
    paths = []
    for task in tasks:
        prefix = join(data_root, task.name) + "/"
        content_type = "text/csv" if task.filename.endswith(".csv") else "application/x-ndjson"
        storage.write_bytes(prefix + task.filename, task.data_bytes(), content_type)
        doc = task_document(task, data_uri=prefix, output_uri=output_uri, base_model=base_model,
                            endpoint=endpoint, namespace=namespace, name=task.name + suffix,
                            training=training)
        path = out_dir / f"{task.name}{suffix}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    return paths
