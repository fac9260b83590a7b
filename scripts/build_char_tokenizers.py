"""Build the character-level tokenizers under ``tokenizer/dialog`` and ``tokenizer/dna``.

Both tokenizers put the special tokens ``[UNK] [CLS] [SEP] [PAD] [MASK]`` at ids 0-4 and give every
known character exactly one id after them, so one behavior (one character) is one token:

* ``dialog``: printable ASCII (space to ``~``) plus newline. Any other character becomes ``[UNK]``.
* ``dna``: ``A C G T N``. A normalizer folds ``a c g t n`` to upper case, maps ``U``/``u`` (uracil, the
  RNA spelling of T) to ``T`` and the other IUPAC ambiguity codes (``R Y S W K M B D H V``, either case)
  to ``N``. Any other character becomes ``[UNK]``.

The normalizer replaces one character with one character, so token ``i`` is always input character
``i``. Special-token strings inside the text (a user typing ``[CLS]``) are split into characters like
any other text, because the saved config sets ``split_special_tokens=True``.

Run ``python scripts/build_char_tokenizers.py`` from the repository root to regenerate both folders.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
DIALOG_CHARACTERS = [chr(code) for code in range(0x20, 0x7F)] + ["\n"]
DNA_CHARACTERS = ["A", "C", "G", "T", "N"]
DNA_AMBIGUITY_CODES = "RYSWKMBDHV"


def build_tokenizer(characters: list[str], normalizer: normalizers.Normalizer | None = None) -> Tokenizer:
    """Build a WordLevel tokenizer with the special tokens at ids 0-4 and one id per character."""
    if len(set(characters)) != len(characters):
        raise ValueError(f"characters contain duplicates: {characters!r}; pass each character once")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + characters)}

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    # `[\s\S]` matches any single code point, newline included, and "isolated" keeps every match
    # (spaces too) as its own piece.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse concatenates the tokens without the separator space that the default decoder inserts.
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def build_dna_normalizer() -> normalizers.Normalizer:
    """Build the DNA normalizer: lower case to upper, U to T, other IUPAC ambiguity codes to N."""
    steps: list[normalizers.Normalizer] = [normalizers.Replace(base.lower(), base) for base in "ACGT"]
    steps.append(normalizers.Replace(Regex("[Uu]"), "T"))
    ambiguity_pattern = "[" + DNA_AMBIGUITY_CODES + DNA_AMBIGUITY_CODES.lower() + "n]"
    steps.append(normalizers.Replace(Regex(ambiguity_pattern), "N"))
    return normalizers.Sequence(steps)


def save_tokenizer(tokenizer: Tokenizer, output_dir: Path) -> None:
    """Save ``tokenizer`` as a transformers fast tokenizer (tokenizer.json + tokenizer_config.json)."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        split_special_tokens=True,
        padding_side="right",
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(output_dir))
    logger.info("wrote %s (vocabulary size %d)", output_dir, fast.vocab_size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-root",
        type=Path,
        default=Path("tokenizer"),
        help="folder that receives the dialog/ and dna/ tokenizer folders (default: tokenizer)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    save_tokenizer(build_tokenizer(DIALOG_CHARACTERS), args.output_root / "dialog")
    save_tokenizer(build_tokenizer(DNA_CHARACTERS, build_dna_normalizer()), args.output_root / "dna")


if __name__ == "__main__":
    main()
