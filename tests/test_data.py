"""Readers, subsampling, bucketing and padding."""
import numpy as np
import pytest
import torch

from minbert.data import DataError, EncodedTask, subsample_indices
from minbert.tasks import build_task
from minbert.tokenizer import Tokenizer

QUORA_HEADER = "\tid\tsentence1\tsentence2\tis_duplicate\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_quora_rows_with_an_empty_label_are_skipped_with_one_warning(tmp_path):
    path = write(tmp_path / "q.csv", QUORA_HEADER
                 + "1\taaa\tHow do I cook rice?\tHow is rice cooked?\t1.0\n"
                 + '2\tbbb\tBroken?\tWhat?\t\n'
                 + "3\tccc\tWhat is a cat?\tWhat is a dog?\t0.0\n"
                 + "4\tddd\tEmpty too\tYes\t\n")
    with pytest.warns(UserWarning, match=r"skipped 2 row.*line 3 \(id bbb\), line 5 \(id ddd\)"):
        examples = build_task("quora", {}).read(path)
    assert examples.ids == ["aaa", "ccc"]
    assert examples.labels.tolist() == [1.0, 0.0]
    assert examples.texts[1] == ["How is rice cooked?", "What is a dog?"]


GOOD_ROW = "1\taaa\tHow do I cook rice?\tHow is rice cooked?\t1.0\n"


@pytest.mark.parametrize("rows, message", [
    # a row short of fields, and one with a stray tab that would shift the label
    ("4\tddd\tShort row\n", r"line 3: 3 fields where the header has 5"),
    ("5\teee\tWhat\tis\tthis?\t0.0\n", r"line 3: 6 fields where the header has 5"),
    # a stray quote at the start of a field would swallow the rows after it
    ('6\tfff\t"Unclosed question?\tAnswer\t1.0\n' + GOOD_ROW * 3
     + '8\thhh\tends here"\tb\t0.0\n',
     r"line 3: a quote opened on this line is closed only on line 7"),
    ('6\tfff\t"Unclosed question?\tAnswer\t1.0\n', r"line 3: a quote .* is never closed"),
    ('7\tggg\t"Quoted" then text\tAnswer\t1.0\n', r"line 3: malformed quoting"),
])
def test_rows_that_do_not_fit_the_header_are_errors_naming_the_line(tmp_path, rows, message):
    path = write(tmp_path / "q.csv", QUORA_HEADER + GOOD_ROW + rows + GOOD_ROW)
    with pytest.raises(DataError, match=message) as error:
        build_task("quora", {}).read(path)
    assert str(path) in str(error.value)


def test_quoted_fields_are_read_as_csv_quotes_them(tmp_path):
    """The CS224N files are written by pandas: quotes around a field, inner ones doubled."""
    path = write(tmp_path / "q.csv", QUORA_HEADER
                 + '1\taaa\t"What does ""quote"" mean?"\tA plain "word" inside\t1.0\n')
    examples = build_task("quora", {}).read(path)
    assert examples.texts == [['What does "quote" mean?'], ['A plain "word" inside']]


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes((QUORA_HEADER + GOOD_ROW).encode() + b"2\tbbb\tcaf\xe9?\tx\t0.0\n")
    with pytest.raises(DataError, match=r"q.csv, line 3: not UTF-8 text \(byte 0xe9"):
        build_task("quora", {}).read(path)


def test_the_real_quora_dev_file_loads_20212_pairs(data_dir):
    with pytest.warns(UserWarning, match="ad118c967d683c93883bf072d"):
        examples = build_task("quora", {}).read(data_dir / "quora-dev.csv")
    assert len(examples) == 20212


def test_sst_test_file_with_two_index_columns_reads_without_labels(data_dir):
    examples = build_task("sst", {}).read(data_dir / "ids-sst-test-student.csv", labelled=False)
    assert len(examples) == 2210 and examples.labels is None
    assert examples.ids[0] == "b7573736a6ddf7be102b7fee0"
    assert examples.texts[0][0] == " Effective but too-tepid biopic"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "empty"),
    ("\tid\tsentence\n1\tx\thello\n", r"missing column\(s\) \['sentiment'\]"),
    ("\tid\tsentence\tsentiment\n", "no usable rows"),
    ("\tid\tsentence\tsentiment\n1\tx\tgood\t2\n2\ty\tbad\tlots\n", r"line 3, column 'sentiment'"),
    ("\tid\tsentence\tsentiment\n1\tx\tgood\t7\n", r"line 2.*not a class in 0..4"),
    ("\tid\tsentence\tsentiment\n1\tx\tgood\tinf\n", r"line 2.*not a class in 0..4"),
    ("\tid\tsentence\tsentiment\n1\tx\tgood\tnan\n", r"line 2.*not a class in 0..4"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "sst.csv"
    if content is not None:
        write(path, content)
    with pytest.raises(DataError, match=message) as error:
        build_task("sst", {}).read(path)
    assert str(path) in str(error.value)


def test_sts_scores_outside_the_range_are_errors(tmp_path):
    path = write(tmp_path / "sts.csv", "\tid\tsentence1\tsentence2\tsimilarity\n"
                 "1\tx\ta\tb\t5.5\n")
    with pytest.raises(DataError, match="outside"):
        build_task("sts", {}).read(path)


def test_subsample_by_fraction_and_count_is_seeded_and_without_replacement():
    a = subsample_indices(1000, 0.1, seed=3)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert np.array_equal(a, subsample_indices(1000, 0.1, seed=3))
    assert not np.array_equal(a, subsample_indices(1000, 0.1, seed=4))
    assert len(subsample_indices(1000, 250, seed=0)) == 250
    assert len(subsample_indices(10, 50, seed=0)) == 10
    with pytest.raises(ValueError):
        subsample_indices(10, 0.01, seed=0)


def test_extra_train_files_each_subsampled_join_the_task(tmp_path):
    header = "\tid\tsentence\tsentiment\n"
    write(tmp_path / "a.csv", header + "".join(f"{i}\ta{i}\tgood\t{i % 5}\n" for i in range(40)))
    write(tmp_path / "b.csv", header + "".join(f"{i}\tb{i}\tbad\t{i % 5}\n" for i in range(60)))
    task = build_task("sst", {"train_files": ["a.csv", {"path": "b.csv", "subsample": 0.5}]})
    examples, counts = task.read_train(tmp_path, seed=0)
    assert len(examples) == 70
    assert counts == {str(tmp_path / "a.csv"): 40, str(tmp_path / "b.csv"): 30}


def test_buckets_cover_every_example_once_and_cut_padding(tiny_checkpoint):
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(0)
    words = ["the", "movie", "is", "good", "bad", "very"]
    sentences = [" ".join(rng.choice(words, size=rng.integers(1, 40))) for _ in range(640)]
    from minbert.data import Examples
    examples = Examples([str(i) for i in range(640)], [sentences], np.zeros(640))
    data = EncodedTask("sst", examples, tokenizer, "single")
    batches = data.bucketed_batches(16, np.random.default_rng(1), bucket_batches=10)
    assert sorted(np.concatenate(batches).tolist()) == list(range(640))

    def padding(batch_list):
        real = slots = 0
        for indices in batch_list:
            r, s = data.batch(indices).token_counts()
            real, slots = real + r, slots + s
        return 1 - real / slots

    shuffled = np.random.default_rng(1).permutation(640)
    random_batches = [shuffled[i:i + 16] for i in range(0, 640, 16)]
    assert padding(batches) < padding(random_batches) / 3


def test_pairs_are_one_segment_cross_encoded_two_bi_encoded_and_three_both(tiny_checkpoint):
    from minbert.data import Examples
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    examples = Examples(["1", "2"], [["the cat", "a dog runs"], ["the dog", "a cat"]],
                        np.array([1.0, 0.0]))
    cross = EncodedTask("quora", examples, tokenizer, "cross").batch(np.arange(2))
    bi = EncodedTask("quora", examples, tokenizer, "bi").batch(np.arange(2))
    assert len(cross.segments) == 1 and len(bi.segments) == 2
    assert cross.segments[0]["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert bi.segments[1]["input_ids"].shape == (2, 4)
    both = EncodedTask("quora", examples, tokenizer, "both").batch(np.arange(2))
    assert len(both.segments) == 3  # the cross-encoded pair, then each sentence
    for mine, theirs in zip(both.segments, cross.segments + bi.segments):
        for key in theirs:
            assert torch.equal(mine[key], theirs[key])


def test_an_encoding_that_does_not_fit_the_examples_is_refused(tiny_checkpoint):
    from minbert.data import Examples
    tokenizer = Tokenizer.from_pretrained(tiny_checkpoint)
    single = Examples(["1"], [["the cat"]], np.array([1.0]))
    pair = Examples(["1"], [["the cat"], ["a dog"]], np.array([1.0]))
    with pytest.raises(ValueError, match="sst: encoding 'bi' does not fit one sentence"):
        EncodedTask("sst", single, tokenizer, "bi")
    with pytest.raises(ValueError, match="quora: encoding 'single' does not fit a pair"):
        EncodedTask("quora", pair, tokenizer, "single")
