"""Reading training/evaluation data: every bad file gets a clear DataError, never a traceback."""

from __future__ import annotations

import pytest

from models.data import Example, check_trainable, read_labeled, stratified_split
from runtime.errors import DataError


def write(tmp_path, name, content, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_reads_csv_with_named_columns(tmp_path):
    p = write(tmp_path, "a.csv", 'q,intent\n"where is the milk, please",find_product\nhi,greet\n')
    assert read_labeled(p, "q", "intent") == [Example("where is the milk, please", "find_product"), Example("hi", "greet")]


def test_missing_column_names_the_columns(tmp_path):
    p = write(tmp_path, "a.csv", "text,label\nhi,greet\n")
    with pytest.raises(DataError) as e:
        read_labeled(p, "utterance", "label")
    assert "'utterance'" in str(e.value) and "['text', 'label']" in str(e.value)


def test_empty_labels_are_reported_with_line_numbers(tmp_path):
    p = write(tmp_path, "a.csv", "text,label\nhi,greet\nbye,\nthanks, \n")
    with pytest.raises(DataError, match=r"2 row\(s\) have an empty 'label' \(lines 3, 4\)"):
        read_labeled(p)


def test_single_class_is_refused_for_training(tmp_path):
    ex = read_labeled(write(tmp_path, "a.csv", "text,label\nhi,greet\nhello,greet\n"))
    with pytest.raises(DataError, match="at least 2 classes"):
        check_trainable(ex, "a.csv")


def test_invalid_utf8_names_the_line(tmp_path):
    p = write(tmp_path, "a.csv", b"text,label\nhi,greet\ncaf\xe9,greet\n", mode="wb")
    with pytest.raises(DataError, match="line 3 is not valid UTF-8"):
        read_labeled(p)


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_empty_files(tmp_path, content):
    with pytest.raises(DataError):
        read_labeled(write(tmp_path, "a.csv", content))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_labeled(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_labeled(tmp_path)


def test_rows_with_empty_text_are_skipped(tmp_path):
    p = write(tmp_path, "a.csv", "text,label\nhi,greet\n,greet\nbye,goodbye\n")
    assert [e.text for e in read_labeled(p)] == ["hi", "bye"]


def test_huge_cell_is_capped(tmp_path):
    p = write(tmp_path, "a.csv", "text,label\n" + "a" * 50_000 + ",x\nb,y\n")
    assert len(read_labeled(p)[0].text) == 2000


def test_rasa_nlu_yaml(tmp_path):
    p = write(tmp_path, "nlu.yml", """version: "3.1"
nlu:
- intent: find_product
  examples: |
    - where is the [oat milk](product)
    - do you sell [bananas]{"entity": "product"}
- intent: greet
  examples: |
    - hi
- synonym: oat milk
  examples: |
    - oatly
""")
    ex = read_labeled(p)
    assert ex == [Example("where is the oat milk", "find_product"), Example("do you sell bananas", "find_product"),
                  Example("hi", "greet")]


def test_rasa_yaml_errors(tmp_path):
    with pytest.raises(DataError, match="invalid YAML"):
        read_labeled(write(tmp_path, "a.yml", "nlu: [unclosed"))
    with pytest.raises(DataError, match="not Rasa NLU"):
        read_labeled(write(tmp_path, "b.yml", "hello: world\n"))


def test_stratified_split_keeps_every_label_and_is_deterministic():
    ex = [Example(f"{lab} {i}", lab) for lab in "abc" for i in range(20)] + [Example("rare", "d"), Example("rare2", "d")]
    keep, held = stratified_split(ex, 0.25, seed=3)
    assert {e.label for e in keep} == {"a", "b", "c", "d"}
    assert sum(e.label == "a" for e in held) == 5
    assert not {e.text for e in keep} & {e.text for e in held}
    assert stratified_split(ex, 0.25, seed=3) == (keep, held)
