"""The committed character tokenizers: one id per character, special ids 0-4, DNA folding."""

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIAL_IDS = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "[MASK]": 4}
PRINTABLE_ASCII_AND_NEWLINE = "".join(chr(code) for code in range(0x20, 0x7F)) + "\n"


def load_build_script():
    script = REPO_ROOT / "scripts" / "build_char_tokenizers.py"
    spec = importlib.util.spec_from_file_location("build_char_tokenizers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dialog_tokenizer():
    return AutoTokenizer.from_pretrained(str(REPO_ROOT / "tokenizer" / "dialog"))


@pytest.fixture(scope="module")
def dna_tokenizer():
    return AutoTokenizer.from_pretrained(str(REPO_ROOT / "tokenizer" / "dna"))


def behavior_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["dialog", "dna"])
def test_special_tokens_at_ids_0_to_4(name):
    tokenizer = AutoTokenizer.from_pretrained(str(REPO_ROOT / "tokenizer" / name))
    assert tokenizer.is_fast
    assert tokenizer.unk_token_id == 0
    assert tokenizer.cls_token_id == 1
    assert tokenizer.sep_token_id == 2
    assert tokenizer.pad_token_id == 3
    assert tokenizer.mask_token_id == 4
    for token, token_id in SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id


def test_dialog_vocabulary_size(dialog_tokenizer):
    # 5 special tokens + 95 printable ASCII characters (space to "~") + newline.
    assert len(dialog_tokenizer) == 101


def test_dna_vocabulary_size(dna_tokenizer):
    assert len(dna_tokenizer) == 10
    assert dna_tokenizer.convert_ids_to_tokens(list(range(5, 10))) == ["A", "C", "G", "T", "N"]


def test_dialog_one_id_per_character(dialog_tokenizer):
    ids = behavior_ids(dialog_tokenizer, PRINTABLE_ASCII_AND_NEWLINE)
    assert len(ids) == len(PRINTABLE_ASCII_AND_NEWLINE)
    assert ids == list(range(5, 5 + len(PRINTABLE_ASCII_AND_NEWLINE)))


def test_dialog_space_and_newline_are_tokens(dialog_tokenizer):
    ids = behavior_ids(dialog_tokenizer, "a b\n\nc  ")
    assert dialog_tokenizer.convert_ids_to_tokens(ids) == ["a", " ", "b", "\n", "\n", "c", " ", " "]


def test_dialog_unknown_characters_map_to_unk(dialog_tokenizer):
    ids = behavior_ids(dialog_tokenizer, "é\tx€\r")
    assert ids == [0, 0, dialog_tokenizer.convert_tokens_to_ids("x"), 0, 0]


def test_dialog_special_token_text_is_split(dialog_tokenizer):
    ids = behavior_ids(dialog_tokenizer, "[CLS]")
    assert dialog_tokenizer.convert_ids_to_tokens(ids) == ["[", "C", "L", "S", "]"]


def test_dialog_adds_cls_and_sep(dialog_tokenizer):
    ids = dialog_tokenizer("ab", add_special_tokens=True)["input_ids"]
    assert dialog_tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "b", "[SEP]"]
    assert ids[0] == 1
    assert ids[-1] == 2


def test_dialog_round_trip_decode(dialog_tokenizer):
    text = "Hi there!\nHow's it going? {x: 1} ~_~"
    ids = dialog_tokenizer(text)["input_ids"]
    assert dialog_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert dialog_tokenizer.decode(behavior_ids(dialog_tokenizer, text)) == text


def test_dialog_right_padding(dialog_tokenizer):
    batch = dialog_tokenizer(["ab", "abc"], padding=True)
    assert batch["input_ids"][0][-1] == 3
    assert batch["attention_mask"][0] == [1, 1, 1, 1, 0]


def test_dna_folds_case_and_ambiguity_codes(dna_tokenizer):
    ids = behavior_ids(dna_tokenizer, "acgtRYN")
    assert dna_tokenizer.convert_ids_to_tokens(ids) == ["A", "C", "G", "T", "N", "N", "N"]


def test_dna_every_iupac_code_is_n(dna_tokenizer):
    codes = "RYSWKMBDHVNryswkmbdhvn"
    ids = behavior_ids(dna_tokenizer, codes)
    assert ids == [dna_tokenizer.convert_tokens_to_ids("N")] * len(codes)


def test_dna_uracil_is_t(dna_tokenizer):
    ids = behavior_ids(dna_tokenizer, "Uu")
    assert dna_tokenizer.convert_ids_to_tokens(ids) == ["T", "T"]


def test_dna_unknown_characters_map_to_unk(dna_tokenizer):
    ids = behavior_ids(dna_tokenizer, "A-x.\nE")
    assert ids == [5, 0, 0, 0, 0, 0]


def test_dna_round_trip_decode(dna_tokenizer):
    ids = dna_tokenizer("ACGTNacgt")["input_ids"]
    assert dna_tokenizer.convert_ids_to_tokens(ids)[0] == "[CLS]"
    assert dna_tokenizer.decode(ids, skip_special_tokens=True) == "ACGTNACGT"


def test_build_script_reproduces_committed_files(tmp_path):
    build = load_build_script()
    build.main(["--output-root", str(tmp_path)])
    for name in ["dialog", "dna"]:
        for file_name in ["tokenizer.json", "tokenizer_config.json"]:
            built = (tmp_path / name / file_name).read_bytes()
            committed = (REPO_ROOT / "tokenizer" / name / file_name).read_bytes()
            assert built == committed, f"tokenizer/{name}/{file_name} is stale; rerun scripts/build_char_tokenizers.py"
