"""Event logs and tokenizer inputs that start with a UTF-8 byte-order mark are read like files without one."""

from use.events import read_event_log
from use.events.tokenizer import read_sequences

BOM = "\ufeff"


def test_event_log_with_byte_order_mark(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(f"{BOM}user_id,timestamp,event\nu1,10,open\nu2,20,view\n".encode("utf-8"))
    log = read_event_log(path)
    assert log.users == ["u1", "u2"]
    assert log.times == [10.0, 20.0]
    assert log.names == ["open", "view"]


def test_tokenizer_text_input_with_byte_order_mark(tmp_path):
    path = tmp_path / "sequences.txt"
    path.write_bytes(f"{BOM}open view\nview close\n".encode("utf-8"))
    assert read_sequences(path) == ["open view", "view close"]


def test_tokenizer_csv_input_with_byte_order_mark(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(f"{BOM}sequence,user_id\nopen view,u1\nview close,u2\n".encode("utf-8"))
    assert read_sequences(path) == ["open view", "view close"]
