"""WordPiece's two rule sets (transformers' BertTokenizer and google-research/bert's FullTokenizer), the choice
per vocabulary kind, and a trained vocabulary numbered the same way in every process."""

import os
import subprocess
import sys
import unicodedata

import pytest

from bertgpt_jax import tokenization
from bertgpt_jax.tokenization.wordpiece import WordPieceTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "ab", "e", "caf", "##\u00e9", "##e", "x", "\u00e9"]
# A private-use character inside a word, a decomposed accent, a format character (ZWJ), a control.
TEXTS = ["a\ue000b x", "cafe\u0301 x", "a\u200db x", "a\x07b x", "\u00e9 e\u0301"]


def _write_vocab(directory, *siblings):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    for name in siblings:
        with open(os.path.join(directory, name), "w") as f:
            f.write('{"do_lower_case": false}')
    return os.path.join(directory, "vocab.txt")


def _original_is_control(ch):
    """google-research/bert tokenization._is_control, transcribed."""
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _original_cased(text):
    """google-research/bert FullTokenizer(do_lower_case=False) on text of words from VOCAB: _clean_text with
    its _is_control, no normalisation at all, whitespace split, greedy longest-match WordPiece."""
    cleaned = "".join(" " if c in " \t\n\r" else c for c in text
                      if not (ord(c) in (0, 0xFFFD) or _original_is_control(c)))
    vocab, out = set(VOCAB), []
    for word in cleaned.split():
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = ["[UNK]"]
                break
            pieces.append(("##" if start else "") + word[start:end])
            start = end
        out += pieces
    return out


def test_hf_rules_match_transformers_bert_tokenizer(tmp_path):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    path = _write_vocab(str(tmp_path / "hf"), "tokenizer_config.json")
    ours = tokenization.from_file(path)
    assert ours.rules == "hf"
    ref = BertTokenizerLegacy(path, do_lower_case=False)
    for text in TEXTS:
        assert ours.tokenize(text) == ref.tokenize(text), text
    assert ours.tokenize("a\ue000b x") == ["ab", "x"]  # the private-use character vanishes
    assert ours.tokenize("cafe\u0301 x") == ["caf", "##\u00e9", "x"]  # composed first


def test_original_rules_for_a_google_release_vocab(tmp_path):
    path = _write_vocab(str(tmp_path / "release"), "bert_config.json")
    ours = tokenization.from_file(path, do_lower_case=False)
    assert ours.rules == "original"
    for text in TEXTS:
        assert ours.tokenize(text) == _original_cased(text), text
    assert ours.tokenize("a\ue000b x") == ["[UNK]", "x"]  # kept, so its word is unknown
    assert ours.tokenize("cafe\u0301 x") == ["[UNK]", "x"]  # e + U+0301 stays two characters
    assert ours.tokenize("a\u200db x") == ["ab", "x"]  # Cf is dropped by both
    # The choice is saved with the tokenizer and changes its fingerprint.
    saved = tokenization.from_file(ours.save(str(tmp_path / "saved")))
    assert saved.rules == "original" and saved.fingerprint == ours.fingerprint
    assert WordPieceTokenizer(VOCAB, do_lower_case=False).fingerprint != ours.fingerprint
    with pytest.raises(ValueError, match="rules 'tf' are not one of"):
        WordPieceTokenizer(VOCAB, rules="tf")


def test_the_control_classes_are_the_references_over_every_code_point():
    tok_o = WordPieceTokenizer(["[UNK]", "a", "##a", "aa"], do_lower_case=False, rules="original")
    tok_h = WordPieceTokenizer(["[UNK]", "a", "##a", "aa"], do_lower_case=False)
    cps = [cp for cp in range(0x80, 0x110000, 7) if unicodedata.category(chr(cp))[0] == "C"
           and not 0xD800 <= cp < 0xE000]
    texts = ["a" + chr(cp) + "a" for cp in cps]
    dropped_o = [ids == [3] for ids in tok_o.encode_batch(texts)]
    dropped_h = [ids == [3] for ids in tok_h.encode_batch(texts)]
    assert dropped_o == [cp == 0xFFFD or _original_is_control(chr(cp)) for cp in cps]
    assert all(dropped_h)


def test_a_trained_vocabulary_is_numbered_alike_in_every_process(tmp_path):
    script = ("import sys; from bertgpt_jax.tokenization import corpus, train; import itertools;"
              "s = list(itertools.islice(corpus.iter_sentences('default'), 3000));"
              "t = train.train_tokenizer(s, 'wordpiece', 600);"
              "sys.stdout.write('\\n'.join(t.vocab))")
    runs = [subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}) for seed in (1, 2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    first, second = (r.stdout.split("\n") for r in runs)
    assert len(first) > 500 and first == second
    assert first[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
