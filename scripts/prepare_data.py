"""Turn the public dialog and DNA sources into USE training and evaluation files.

Sub-commands:

* ``dialog``: the Chit-Chat dataset (PyPI package ``chitchat-dataset==0.9.0``, MIT licence). A user is a
  message sender. Their behavior sequence is the characters of their messages in time order, with the
  messages joined by one newline. Text is kept exactly as written (the tokenizer maps characters
  outside printable ASCII and newline to ``[UNK]``). Empty messages are skipped.
* ``dna``: rRNA reference sequences from the Debian package ``ncbi-rrna-data``, cut down to the
  committed ``data_sources/dna/rrna_species.fasta.xz``. A user is a species. Its behavior sequence
  is its SSU record followed by its LSU record, one base per behavior.
* ``dna-subset``: cut that committed file from ``blastdbcmd`` FASTA dumps of the SSU and LSU databases
  (``data_sources/dna/PROVENANCE.md`` lists the commands).

``dialog`` and ``dna`` write into ``--output-dir``:

* ``train.csv``: header ``sequence,user_id``, Python csv quoting (dialog sequences contain newlines).
* ``eval.tsv``: header ``history<TAB>context``, csv module with a tab delimiter. Each row is one
  evaluation user with at least ``2 * max_len`` behaviors: history is behaviors ``[0, max_len)``,
  context is ``[max_len, 2 * max_len)``. Evaluation users never appear in ``train.csv``.
* ``eval_users.txt``: the evaluation user ids, one per line, in ``eval.tsv`` row order.
* ``stats.json``: user and behavior counts, the drop counts and the options used.

Every user with at least ``2 * max_len`` behaviors is an evaluation candidate. A ``random.Random(seed)``
samples ``--num-eval-users`` of them, and every other user goes to training. The output is
deterministic: the same inputs and options give byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import logging
import lzma
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

logger = logging.getLogger("prepare_data")

CHITCHAT_REQUIREMENT = "chitchat-dataset==0.9.0"
CHITCHAT_WHEEL_NAME = "chitchat_dataset-0.9.0-py3-none-any.whl"
CHITCHAT_WHEEL_SHA256 = "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e"
CHITCHAT_MEMBER = "chitchat_dataset/dataset.json"

REPO_ROOT = Path(__file__).resolve().parents[1]
DNA_SUBSET_PATH = Path("data_sources/dna/rrna_species.fasta.xz")  # relative to REPO_ROOT
DNA_SUBUNIT_ORDER = ("SSU", "LSU")
FASTA_LINE_WIDTH = 80

# blastdbcmd FASTA titles look like ">gb|AB049052| uncultured archaeon pPCA19.6 16S ribosomal RNA ...".
BLAST_TITLE_PATTERN = re.compile(r"^(?P<database>\w+)\|(?P<accession>[^|]*)\|\s*(?P<description>.*)$")
# A species name is a capitalised genus and a lower-case epithet followed by a space, a comma or the
# end, so "Bacillus sp. X" (epithet "sp.") does not match. "Candidatus" is kept as part of the name.
SPECIES_PATTERN = re.compile(r"^(?P<prefix>Candidatus )?(?P<genus>[A-Z][a-z]+) (?P<epithet>[a-z][a-z-]*)(?=[\s,]|$)")
NON_SPECIES_GENERA = frozenset({"Uncultured", "Unidentified", "Environmental", "Arctic", "Antarctic"})
NON_SPECIES_EPITHETS = frozenset({"sea", "yellows", "isolate", "strain", "str", "genomosp", "group"})
# Any of these words in a description marks a record whose organism is not the named species:
# "Odontotermes formosanus symbiont MOf1" is a bacterium living in a termite, "Tomato big bud
# phytoplasma" names a plant disease, "... clone X" comes from an environmental clone library.
NON_SPECIES_WORDS = frozenset(
    {
        "bacterium",
        "archaeon",
        "proteobacterium",
        "endosymbiont",
        "symbiont",
        "epibiont",
        "phytoplasma",
        "environmental",
        "metagenome",
        "eukaryote",
        "clone",
        "sp.",
        "uncultured",
        "unidentified",
    }
)
NON_GENUS_SUFFIXES = ("aceae", "ales")


@dataclass
class SplitOptions:
    """Options that decide which users go to evaluation and training, and how much of each is kept."""

    max_len: int
    num_eval_users: int
    seed: int = 0
    min_train_len: int = 100
    max_train_users: int | None = None
    max_train_len: int | None = None

    def validate(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} is invalid. Pass --max-len of at least 1")
        if self.num_eval_users < 1:
            raise ValueError(f"num_eval_users={self.num_eval_users} is invalid. Pass --num-eval-users of at least 1")
        if self.min_train_len < 1:
            raise ValueError(f"min_train_len={self.min_train_len} is invalid. Pass --min-train-len of at least 1")
        if self.max_train_users is not None and self.max_train_users < 1:
            raise ValueError(f"max_train_users={self.max_train_users} is invalid. Pass a positive value or omit it")
        if self.max_train_len is not None and self.max_train_len < 1:
            raise ValueError(f"max_train_len={self.max_train_len} is invalid. Pass a positive value or omit it")


@dataclass
class DatasetSplit:
    """Training and evaluation users of one dataset, each as ``user_id -> behavior string``."""

    train: dict[str, str]
    eval_user_ids: list[str]
    eval_rows: list[tuple[str, str]]  # (history, context), one per evaluation user
    counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Splitting and writing (shared by both datasets)
# --------------------------------------------------------------------------------------------------


def split_users(users: dict[str, str], options: SplitOptions) -> DatasetSplit:
    """Pick evaluation users with a seeded RNG and put every other usable user into training.

    Raises ValueError when ``users`` is empty or has fewer than ``num_eval_users`` users with at least
    ``2 * max_len`` behaviors.
    """
    options.validate()
    counts: Counter[str] = Counter()
    counts["input_users"] = len(users)

    nonempty = {user_id: sequence for user_id, sequence in users.items() if sequence}
    counts["dropped_empty"] = len(users) - len(nonempty)
    if not nonempty:
        raise ValueError(f"no usable user: all {len(users)} users have an empty behavior sequence")

    eval_span = 2 * options.max_len
    candidates = sorted(user_id for user_id, sequence in nonempty.items() if len(sequence) >= eval_span)
    counts["eval_candidates"] = len(candidates)
    if len(candidates) < options.num_eval_users:
        raise ValueError(
            f"only {len(candidates)} users have at least 2 * max_len = {eval_span} behaviors, "
            f"but num_eval_users={options.num_eval_users}. Lower --max-len or --num-eval-users"
        )

    rng = random.Random(options.seed)
    eval_user_ids = sorted(rng.sample(candidates, options.num_eval_users))
    eval_rows = [
        (nonempty[user_id][: options.max_len], nonempty[user_id][options.max_len : eval_span])
        for user_id in eval_user_ids
    ]
    eval_set = set(eval_user_ids)
    # Behaviors of evaluation users past 2 * max_len are not written anywhere, because training on
    # them would leak evaluation users into training.
    counts["eval_behaviors_discarded"] = sum(len(nonempty[user_id]) - eval_span for user_id in eval_user_ids)

    train_ids = sorted(user_id for user_id in nonempty if user_id not in eval_set)
    long_enough = [user_id for user_id in train_ids if len(nonempty[user_id]) >= options.min_train_len]
    counts["dropped_too_short"] = len(train_ids) - len(long_enough)
    train_ids = long_enough

    if options.max_train_users is not None and len(train_ids) > options.max_train_users:
        counts["dropped_by_max_train_users"] = len(train_ids) - options.max_train_users
        train_ids = sorted(rng.sample(train_ids, options.max_train_users))
    else:
        counts["dropped_by_max_train_users"] = 0

    train: dict[str, str] = {}
    truncated = 0
    for user_id in train_ids:
        sequence = nonempty[user_id]
        if options.max_train_len is not None and len(sequence) > options.max_train_len:
            sequence = sequence[: options.max_train_len]
            truncated += 1
        train[user_id] = sequence
    counts["truncated_by_max_train_len"] = truncated
    counts["train_users"] = len(train)
    counts["eval_users"] = len(eval_user_ids)
    if not train:
        raise ValueError(
            f"no training user left: {len(nonempty)} non-empty users, {len(eval_user_ids)} taken for evaluation, "
            f"{counts['dropped_too_short']} shorter than min_train_len={options.min_train_len}. "
            "Lower --num-eval-users or --min-train-len"
        )
    return DatasetSplit(train=train, eval_user_ids=eval_user_ids, eval_rows=eval_rows, counts=dict(counts))


def write_split(split: DatasetSplit, output_dir: Path, options: SplitOptions, dataset: str, source: str) -> dict:
    """Write train.csv, eval.tsv, eval_users.txt and stats.json into ``output_dir`` and return the stats."""
    output_dir.mkdir(parents=True, exist_ok=True)

    with open(output_dir / "train.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sequence", "user_id"])
        for user_id, sequence in split.train.items():
            writer.writerow([sequence, user_id])

    with open(output_dir / "eval.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["history", "context"])
        writer.writerows(split.eval_rows)

    with open(output_dir / "eval_users.txt", "w", encoding="utf-8", newline="") as handle:
        handle.writelines(user_id + "\n" for user_id in split.eval_user_ids)

    train_behaviors = sum(len(sequence) for sequence in split.train.values())
    stats = {
        "dataset": dataset,
        "source": source,
        "seed": options.seed,
        "max_len": options.max_len,
        "min_train_len": options.min_train_len,
        "max_train_users": options.max_train_users,
        "max_train_len": options.max_train_len,
        "users": split.counts["train_users"] + split.counts["eval_users"],
        "behaviors": train_behaviors + 2 * options.max_len * split.counts["eval_users"],
        "train_behaviors": train_behaviors,
        **split.counts,
    }
    with open(output_dir / "stats.json", "w", encoding="utf-8", newline="") as handle:
        json.dump(stats, handle, indent=2, sort_keys=True)
        handle.write("\n")

    logger.info(
        "%s: %d input users, dropped %d empty, %d shorter than %d behaviors, %d over --max-train-users; "
        "truncated %d to --max-train-len",
        dataset,
        split.counts["input_users"],
        split.counts["dropped_empty"],
        split.counts["dropped_too_short"],
        options.min_train_len,
        split.counts["dropped_by_max_train_users"],
        split.counts["truncated_by_max_train_len"],
    )
    logger.info(
        "%s: wrote to %s: training users: %d (%d behaviors); evaluation users: %d of %d with >= %d behaviors "
        "(%d behaviors past 2 * max_len discarded)",
        dataset,
        output_dir,
        split.counts["train_users"],
        train_behaviors,
        split.counts["eval_users"],
        split.counts["eval_candidates"],
        2 * options.max_len,
        split.counts["eval_behaviors_discarded"],
    )
    return stats


# --------------------------------------------------------------------------------------------------
# Dialog: Chit-Chat
# --------------------------------------------------------------------------------------------------


def download_chitchat_wheel(raw_dir: Path) -> Path:
    """Return the Chit-Chat wheel in ``raw_dir``, running ``pip download`` only when it is missing.

    Raises RuntimeError when pip fails and ValueError when the wheel's SHA-256 is not the pinned one.
    """
    wheel = raw_dir / CHITCHAT_WHEEL_NAME
    if wheel.exists():
        logger.info("using the existing %s", wheel)
    else:
        raw_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", CHITCHAT_REQUIREMENT, "-d", str(raw_dir)]
        logger.info("downloading %s: %s", CHITCHAT_REQUIREMENT, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"pip download of {CHITCHAT_REQUIREMENT} failed (exit {result.returncode}): {result.stderr.strip()}. "
                f"Fetch {CHITCHAT_WHEEL_NAME} by hand into {raw_dir} or pass --source"
            )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != CHITCHAT_WHEEL_SHA256:
        raise ValueError(
            f"{wheel} has SHA-256 {digest}, expected {CHITCHAT_WHEEL_SHA256}. Delete it and rerun to download again"
        )
    return wheel


def load_chitchat_conversations(path: Path) -> dict:
    """Read the Chit-Chat conversations from the wheel (``.whl``) or from a ``dataset.json`` file."""
    if not path.exists():
        raise FileNotFoundError(f"Chit-Chat source not found: {path}. Pass the wheel or a dataset.json via --source")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            try:
                raw = wheel.read(CHITCHAT_MEMBER)
            except KeyError:
                message = f"{path} has no member {CHITCHAT_MEMBER}, so it is not the chitchat-dataset wheel"
                raise ValueError(message) from None
    else:
        raw = path.read_bytes()
    conversations = json.loads(raw)
    if not isinstance(conversations, dict):
        raise ValueError(f"{path}: expected a JSON object of conversations, found {type(conversations).__name__}")
    return conversations


def collect_dialog_users(conversations: dict) -> tuple[dict[str, str], Counter]:
    """Build ``sender -> text`` with each sender's non-empty messages in time order, joined by newlines.

    Messages are ordered by timestamp, then by the conversation's position in the file, turn index and
    position in the turn, so equal timestamps keep the file order. Returns the users and the counts of
    messages read and of empty messages skipped.
    """
    counts: Counter[str] = Counter()
    messages_by_sender: dict[str, list[tuple[datetime, int, int, int, str]]] = defaultdict(list)
    for conversation_index, (conversation_id, conversation) in enumerate(conversations.items()):
        try:
            turns = conversation["messages"]
        except (KeyError, TypeError):
            raise ValueError(f"conversation {conversation_id!r} has no 'messages' list") from None
        for turn_index, turn in enumerate(turns):
            for message_index, message in enumerate(turn):
                counts["messages"] += 1
                try:
                    sender, text, raw_timestamp = message["sender"], message["text"], message["timestamp"]
                except (KeyError, TypeError):
                    raise ValueError(
                        f"conversation {conversation_id!r}, turn {turn_index}, message {message_index}: "
                        f"expected 'sender', 'text' and 'timestamp' keys, found {message!r}"
                    ) from None
                if not text:
                    counts["empty_messages"] += 1
                    messages_by_sender.setdefault(sender, [])
                    continue
                timestamp = datetime.fromisoformat(raw_timestamp.replace("Z", "+00:00"))
                messages_by_sender[sender].append((timestamp, conversation_index, turn_index, message_index, text))

    users = {}
    for sender, messages in messages_by_sender.items():
        messages.sort(key=lambda item: item[:4])
        users[sender] = "\n".join(item[4] for item in messages)
    counts["senders"] = len(users)
    return users, counts


def prepare_dialog(source: Path, output_dir: Path, options: SplitOptions) -> dict:
    """Write the dialog dataset from a Chit-Chat wheel or dataset.json ``source`` and return the stats."""
    conversations = load_chitchat_conversations(source)
    users, counts = collect_dialog_users(conversations)
    logger.info(
        "dialog: %d conversations, %d messages (%d empty, skipped), %d senders",
        len(conversations),
        counts["messages"],
        counts["empty_messages"],
        counts["senders"],
    )
    split = split_users(users, options)
    split.counts["conversations"] = len(conversations)
    split.counts["messages"] = counts["messages"]
    split.counts["empty_messages"] = counts["empty_messages"]
    return write_split(split, output_dir, options, "dialog", source.name)


# --------------------------------------------------------------------------------------------------
# DNA: rRNA reference sequences
# --------------------------------------------------------------------------------------------------


def open_text(path: Path) -> io.TextIOBase:
    """Open a plain, ``.gz`` or ``.xz`` text file for reading."""
    if not path.exists():
        raise FileNotFoundError(f"FASTA file not found: {path}")
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="ascii")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="ascii")
    return open(path, encoding="ascii")


def read_fasta(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(title, sequence)`` per FASTA record, the title without its ``>``."""
    title = None
    chunks: list[str] = []
    with open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if line.startswith(">"):
                if title is not None:
                    yield title, "".join(chunks)
                title = line[1:]
                chunks = []
            elif title is None:
                if line.strip():
                    raise ValueError(f"{path}:{line_number}: sequence data before the first '>' title line")
            else:
                chunks.append(line.strip())
    if title is not None:
        yield title, "".join(chunks)


def species_from_description(description: str) -> str | None:
    """Return the binomial species name that starts a BLAST description, or None for unnamed organisms.

    A heuristic stand-in for a taxid, because the ncbi-rrna-data databases store taxid 0 for every
    record: "Bacillus subtilis strain 168 16S ..." gives "Bacillus subtilis", while "uncultured
    bacterium ...", "Bacillus sp. X ...", "Enterobacteriaceae bacterium ..." and "Odontotermes
    formosanus symbiont ..." give None.
    """
    match = SPECIES_PATTERN.match(description)
    if match is None:
        return None
    genus, epithet = match["genus"], match["epithet"]
    if genus in NON_SPECIES_GENERA or genus.endswith(NON_GENUS_SUFFIXES) or epithet in NON_SPECIES_EPITHETS:
        return None
    words = {word.rstrip(",;").lower() for word in description.split()}
    if not words.isdisjoint(NON_SPECIES_WORDS):
        return None
    return f"{match['prefix'] or ''}{genus} {epithet}"


def unambiguous_base_count(sequence: str) -> int:
    return sum(sequence.count(base) for base in "ACGT")


def cut_dna_subset(ssu_fasta: Path, lsu_fasta: Path, output: Path) -> Counter:
    """Write one representative SSU and LSU record per named species from blastdbcmd FASTA dumps.

    The representative of a (species, subunit) pair is the record with the most A/C/G/T bases, ties
    broken by the smaller accession and then the smaller sequence string. Output titles are
    ``ACCESSION|SUBUNIT|Species name|description``, records are sorted by species then SSU before
    LSU, and the file is xz-compressed when ``output`` ends in ``.xz``. Returns counts of records read,
    of records without a species name and of records not chosen.
    """
    counts: Counter[str] = Counter()
    # (species, subunit) -> (-unambiguous bases, accession, sequence, description)
    best: dict[tuple[str, str], tuple[int, str, str, str]] = {}
    for subunit, path in (("SSU", ssu_fasta), ("LSU", lsu_fasta)):
        for title, sequence in read_fasta(path):
            counts[f"{subunit}_records"] += 1
            match = BLAST_TITLE_PATTERN.match(title)
            if match is None:
                raise ValueError(f"{path}: title {title!r} is not in blastdbcmd's 'db|accession| description' form")
            species = species_from_description(match["description"])
            if species is None:
                counts[f"{subunit}_without_species"] += 1
                continue
            candidate = (-unambiguous_base_count(sequence), match["accession"], sequence, match["description"])
            key = (species, subunit)
            if key not in best or candidate < best[key]:
                best[key] = candidate

    by_species: dict[str, dict[str, tuple[int, str, str, str]]] = defaultdict(dict)
    for (species, subunit), record in best.items():
        by_species[species][subunit] = record
    for subunit in DNA_SUBUNIT_ORDER:
        chosen = sum(1 for records in by_species.values() if subunit in records)
        counts[f"{subunit}_not_chosen"] = (
            counts[f"{subunit}_records"] - counts[f"{subunit}_without_species"] - chosen
        )
    counts["species"] = len(by_species)
    counts["species_with_both"] = sum(1 for records in by_species.values() if len(records) == 2)

    lines = []
    for species in sorted(by_species):
        for subunit in DNA_SUBUNIT_ORDER:
            if subunit not in by_species[species]:
                continue
            _, accession, sequence, description = by_species[species][subunit]
            lines.append(f">{accession}|{subunit}|{species}|{description}\n")
            for start in range(0, len(sequence), FASTA_LINE_WIDTH):
                lines.append(sequence[start : start + FASTA_LINE_WIDTH] + "\n")
    data = "".join(lines).encode("ascii")

    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".xz":
        data = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)
    output.write_bytes(data)
    logger.info(
        "dna-subset: %d species (%d with both SSU and LSU) from %d SSU and %d LSU records; "
        "%d SSU and %d LSU records had no species name, %d SSU and %d LSU were not the representative; wrote %s",
        counts["species"],
        counts["species_with_both"],
        counts["SSU_records"],
        counts["LSU_records"],
        counts["SSU_without_species"],
        counts["LSU_without_species"],
        counts["SSU_not_chosen"],
        counts["LSU_not_chosen"],
        output,
    )
    return counts


def collect_dna_users(records: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Build ``species -> sequence`` from subset records: SSU records first, then LSU, each by accession."""
    parts: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for title, sequence in records:
        fields = title.split("|", 3)
        if len(fields) != 4 or fields[1] not in DNA_SUBUNIT_ORDER:
            raise ValueError(
                f"title {title!r} is not 'ACCESSION|SSU or LSU|Species|description'. "
                "Cut the file with `prepare_data.py dna-subset`"
            )
        accession, subunit, species, _ = fields
        parts[species].append((DNA_SUBUNIT_ORDER.index(subunit), accession, sequence))
    return {species: "".join(item[2] for item in sorted(items)) for species, items in parts.items()}


def prepare_dna(source: Path, output_dir: Path, options: SplitOptions) -> dict:
    """Write the DNA dataset from a subset FASTA ``source`` cut by ``dna-subset`` and return the stats."""
    records = list(read_fasta(source))
    users = collect_dna_users(records)
    logger.info("dna: %d records, %d species", len(records), len(users))
    split = split_users(users, options)
    split.counts["records"] = len(records)
    return write_split(split, output_dir, options, "dna", source.name)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_split_arguments(parser: argparse.ArgumentParser, output_dir: str, max_len: int, num_eval_users: int) -> None:
    parser.add_argument(
        "--output-dir", type=Path, default=Path(output_dir), help=f"output folder (default: {output_dir})"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=max_len,
        help=f"behaviors (one character or base each) in each of history and context of an evaluation row "
        f"(default: {max_len})",
    )
    parser.add_argument(
        "--num-eval-users",
        type=int,
        default=num_eval_users,
        help=f"evaluation users, sampled from users with >= 2 * max-len behaviors (default: {num_eval_users})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the evaluation and training-cap sampling (default: 0)"
    )
    parser.add_argument(
        "--min-train-len",
        type=int,
        default=100,
        help="training users with fewer behaviors are dropped as too short (default: 100)",
    )
    parser.add_argument(
        "--max-train-users",
        type=int,
        default=None,
        help="keep at most this many training users, sampled with --seed (default: all)",
    )
    parser.add_argument(
        "--max-train-len",
        type=int,
        default=None,
        help="truncate each training sequence to its first N behaviors (default: no limit)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    dialog = commands.add_parser("dialog", help="Chit-Chat senders -> data/dialog")
    dialog.add_argument(
        "--raw-dir",
        type=Path,
        default=Path("data/raw"),
        help=f"folder for {CHITCHAT_WHEEL_NAME}, which pip downloads only when it is missing (default: data/raw)",
    )
    dialog.add_argument(
        "--source",
        type=Path,
        default=None,
        help="read this wheel or dataset.json instead of downloading into --raw-dir",
    )
    add_split_arguments(dialog, "data/dialog", max_len=2000, num_eval_users=150)

    dna = commands.add_parser("dna", help="rRNA species -> data/dna")
    dna.add_argument(
        "--source",
        type=Path,
        default=None,
        help=f"subset FASTA (plain, .gz or .xz) cut by dna-subset (default: {DNA_SUBSET_PATH} in the repository)",
    )
    add_split_arguments(dna, "data/dna", max_len=2000, num_eval_users=200)

    subset = commands.add_parser("dna-subset", help="cut the committed DNA subset from blastdbcmd FASTA dumps")
    subset.add_argument("--ssu-fasta", type=Path, required=True, help="blastdbcmd -outfmt %%f dump of the SSU database")
    subset.add_argument("--lsu-fasta", type=Path, required=True, help="blastdbcmd -outfmt %%f dump of the LSU database")
    subset.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"subset FASTA to write, xz-compressed when it ends in .xz (default: {DNA_SUBSET_PATH} in the repository)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "dna-subset":
        cut_dna_subset(args.ssu_fasta, args.lsu_fasta, args.output or REPO_ROOT / DNA_SUBSET_PATH)
        return 0

    options = SplitOptions(
        max_len=args.max_len,
        num_eval_users=args.num_eval_users,
        seed=args.seed,
        min_train_len=args.min_train_len,
        max_train_users=args.max_train_users,
        max_train_len=args.max_train_len,
    )
    try:
        # Validate before any download, so that a bad flag fails at once.
        options.validate()
        if args.command == "dialog":
            source = args.source if args.source is not None else download_chitchat_wheel(args.raw_dir)
            prepare_dialog(source, args.output_dir, options)
        else:
            prepare_dna(args.source or REPO_ROOT / DNA_SUBSET_PATH, args.output_dir, options)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
