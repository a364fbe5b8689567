"""Tokenizers: exactness against the reference implementations, loading, saving, training, bad files."""

import base64
import json
import os
import random
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from bertgpt_jax import tokenization
from bertgpt_jax.tokenization import bpe

MIXED = [
    "Hello, World! This is BERT's WordPiece tokenizer; it splits punctuation... e.g. (a)-[b]{c}.",
    "unaffable, re-tokenization, and don't-stop-believing",
    "Crème brûlée à la façon de Ærøskøbing — naïve coöperation, Ångström, İstanbul,",
    "ΟΔΟΣ ΣΟΦΙΑΣ. ΣΑΣ Σ",
    "北京是中国的首都。我爱自然语言处理！",
    "日本語のテキスト、ひらがなとカタカナ。東京タワー",
    "한국어 문장도 있습니다.",
    "Emoji 😀👍🏽🇫🇷 and symbols ©®™ ∑∫√ ½ ①",
    "control\x00chars\x07 and\x1b[31m escapes\ufeff zero\u200bwidth \ufffd replacement",
    "tabs\tand\nnewlines\r\nand   runs     of\u3000whitespace\u00a0nbsp \u2028 line sep",
    "combining e\u0301 vs é and Å vs A\u030a; ﬁ ligature; full-width ＡＢＣ１２３",
    "x" * 199 + " " + "y" * 200 + " " + "z" * 201 + " " + "supercalifragilistic" * 15,
    "[CLS] [MASK] [SEP] [PAD] [UNK] look like special tokens but are text",
    "",
    "   ",
    "The year 2024's GDP grew 3.5% vs. 2.1% in Q4—per the U.S. Bureau (BEA).",
    "Wörter wie Straße, Größe und Übermaß; español: ¿Qué tal? ¡Muy bien!",
    "Русский текст, ελληνικά, עברית, العربية, हिन्दी, ไทย",
]


def _random_texts(n, seed=0):
    rng = random.Random(seed)
    pools = [range(0x20, 0x7F), range(0xA0, 0x250), range(0x300, 0x370), range(0x370, 0x400),
             range(0x4E00, 0x4E80), range(0x3040, 0x3100), range(0x1F600, 0x1F650), range(0, 0x20),
             range(0x2000, 0x2070), range(0xAC00, 0xAC40), range(0x0, 0x110000)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 40)):
            c = rng.choice(rng.choice(pools))
            if not 0xD800 <= c < 0xE000:
                chars.append(chr(c))
            if rng.random() < 0.25:
                chars.append(" " * rng.randint(1, 3))
        out.append("".join(chars))
    return out


def _reference_bert(vocab_file, lower):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    ref = BertTokenizerLegacy(vocab_file, do_lower_case=lower)
    ref.wordpiece_tokenizer.max_input_chars_per_word = 200  # the original release's limit
    return ref


def _ref_tokenize(ref, text):
    """The original FullTokenizer path: "[MASK]" in text is text (no special-token matching)."""
    return [p for word in ref.basic_tokenizer.tokenize(text) for p in ref.wordpiece_tokenizer.tokenize(word)]


@pytest.mark.parametrize("lower", [True, False])
def test_wordpiece_identical_to_python_bert_tokenizer(minilm_dir, lower):
    vocab_file = os.path.join(minilm_dir, "vocab.txt")
    ref = _reference_bert(vocab_file, lower)
    ours = tokenization.from_file(vocab_file, do_lower_case=lower)
    texts = MIXED + _random_texts(400, seed=int(lower))
    got = [ours.tokenize(t) for t in texts]
    want = [_ref_tokenize(ref, t) for t in texts]
    mismatches = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]}"
    assert ours.encode_batch(texts) == [ref.convert_tokens_to_ids(w) for w in want]
    long = ours.tokenize("a" * 200 + " " + "b" * 201)
    assert long[-1] == "[UNK]" and long.count("[UNK]") == 1


def test_wordpiece_character_classes_are_built_in_this_session():
    from bertgpt_jax.tokenization import wordpiece

    # conftest points the cache at a fresh directory: the test below checks a table built by this code.
    assert wordpiece._cache_path().startswith(os.environ["BERTGPT_JAX_CACHE_DIR"])
    wordpiece._classes.cache_clear()
    assert wordpiece._classes() == wordpiece._build_classes()
    assert os.path.exists(wordpiece._cache_path())


@pytest.mark.parametrize("lower", [True, False])
def test_wordpiece_every_character_class_matches(minilm_dir, lower):
    """Each code point (sampled: all of the BMP's first 0x3400, then every 13th, plus block edges) inside
    words, against the Python reference: catches Unicode-table differences between Rust and Python."""
    ref = _reference_bert(os.path.join(minilm_dir, "vocab.txt"), lower)
    ours = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=lower)
    edges = [c for e in (0x2B81F, 0x2B820, 0x2CEAF, 0x2CEB0, 0xF8FF, 0xF900, 0xFAFF, 0xFB00, 0x9FFF, 0xA000)
             for c in range(e - 2, e + 3)]
    cps = sorted(set(range(0x3400)) | set(range(0x3400, 0x110000, 13)) | set(edges))
    cps = [c for c in cps if not 0xD800 <= c < 0xE000]
    texts = [f"Ab{chr(c)}cd e{chr(c)} {chr(c)}" for c in cps]
    got = [e.tokens for e in ours.hf.encode_batch(texts, add_special_tokens=False)]
    want = [_ref_tokenize(ref, t) for t in texts]
    bad = [(hex(c), w, g) for c, w, g in zip(cps, want, got) if w != g]
    assert not bad, f"{len(bad)} code points differ (Python unicodedata {unicodedata.unidata_version}): {bad[:5]}"


@pytest.mark.parametrize("lower", [True, False])
def test_wordpiece_ascii_fast_path_matches(minilm_dir, lower):
    """ASCII text takes the stock Rust normaliser: every ASCII character in context, and random ASCII text."""
    ref = _reference_bert(os.path.join(minilm_dir, "vocab.txt"), lower)
    ours = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=lower)
    rng = random.Random(5)
    texts = [f"Ab{chr(c)}cd e{chr(c)} {chr(c)}x{chr(c)}" for c in range(128)]
    texts += ["".join(chr(rng.randrange(128)) for _ in range(rng.randint(1, 80))) for _ in range(500)]
    texts += ["A" * 201 + " ok", "Hello, World!!", "x\x0by\x0cz\x1c\x1fw\x7fv"]
    want = [_ref_tokenize(ref, t) for t in texts]
    assert [ours.tokenize(t) for t in texts] == want
    mixed = texts[:50] + MIXED  # a batch that mixes both paths keeps its order
    assert ours.encode_batch(mixed) == [ref.convert_tokens_to_ids(_ref_tokenize(ref, t)) for t in mixed]


def test_wordpiece_loads_every_format_and_round_trips(minilm_dir, tmp_path):
    from_txt = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"))
    from_dir = tokenization.from_file(minilm_dir)
    from_json = tokenization.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    assert from_txt.kind == from_dir.kind == from_json.kind == "wordpiece"
    assert from_json.max_input_chars_per_word == 100  # as that file says
    assert from_json.vocab == from_txt.vocab and from_json.do_lower_case
    for text in MIXED[:10]:  # no word over 100 characters: the two limits agree
        ids = from_txt.encode(text)
        assert from_dir.encode(text) == ids and from_json.encode(text) == ids
    info = from_txt.info()
    assert (info["cls_token_id"], info["sep_token_id"], info["mask_token_id"], info["pad_token_id"],
            info["unk_token_id"], info["eos_token_id"]) == (101, 102, 103, 0, 100, None)
    assert from_txt.vocab_size == 30522
    saved = tokenization.from_file(from_txt.save(str(tmp_path / "saved")))
    assert saved.fingerprint == from_txt.fingerprint and saved.encode(MIXED[2]) == from_txt.encode(MIXED[2])
    assert from_dir.fingerprint == from_txt.fingerprint  # a directory's vocab.txt comes first
    cased = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=False)
    assert cased.fingerprint != from_txt.fingerprint
    cased_dir = tmp_path / "cased"
    cased_dir.mkdir()
    (cased_dir / "vocab.txt").write_text("\n".join(from_txt.vocab) + "\n", encoding="utf-8")
    (cased_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}', encoding="utf-8")
    assert tokenization.from_file(str(cased_dir)).fingerprint == cased.fingerprint
    assert from_txt.decode(from_txt.encode("Hello, unaffable world.")) == "hello, unaffable world."
    table = from_txt.word_start_table()
    vocab = from_txt.vocab
    assert table.shape == (30522,) and table.dtype == bool
    assert table[vocab.index("the")] and not table[vocab.index("##s")] and table[103]
    assert table.sum() == sum(not t.startswith("##") for t in vocab)


def _gpt2_reference(path):
    """tiktoken's GPT-2 encoding: the published ranks, and tiktoken's own published GPT-2 pattern (not ours)."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    with open(path, "rb") as f:
        ranks = {base64.b64decode(a): int(b) for a, b in (line.split() for line in f if line.strip())}
    return tiktoken.Encoding("gpt2-reference", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}), ranks


# GPT-2's ids for a few strings, as its published tokenizer gives them (contractions are pre-tokens of their own).
GPT2_KNOWN_IDS = {
    "Hello world": [15496, 995],
    "I'm": [40, 1101],
    " don't": [836, 470],
    "We'll see, they've said it's fine.": [1135, 1183, 766, 11, 484, 1053, 531, 340, 338, 3734, 13],
}


def test_gpt2_bpe_gives_gpt2s_known_ids(gpt2_tiktoken):
    tok = tokenization.from_file(gpt2_tiktoken)
    assert {text: tok.encode(text) for text in GPT2_KNOWN_IDS} == GPT2_KNOWN_IDS


def test_gpt2_bpe_identical_to_tiktoken_and_lossless(gpt2_tiktoken):
    ref, _ = _gpt2_reference(gpt2_tiktoken)
    tok = tokenization.from_file(gpt2_tiktoken)
    assert tok.kind == "bpe" and tok.vocab_size == 50257 and tok.eos_token_id == 50256
    texts = MIXED + _random_texts(300, seed=3) + ["<|endoftext|> is text here", " leading space", "a\n\n\nb"]
    for text in texts:
        ids = tok.encode(text)
        assert ids == ref.encode_ordinary(text), text
        assert tok.decode(ids) == text
    assert tok.encode_batch(texts) == [ref.encode_ordinary(t) for t in texts]
    assert tok.tokenize(" Hello world") == ["ĠHello", "Ġworld"]
    table = tok.word_start_table()
    assert table[tok.encode(" world")[0]] and not table[tok.encode("world")[0]] and table[50256]


def test_bpe_document_encoding_marks_sentence_ends(gpt2_tiktoken):
    tok = tokenization.from_file(gpt2_tiktoken)
    ref, _ = _gpt2_reference(gpt2_tiktoken)
    sentences = ["First sentence here.", "Second one, with 'quotes'.", "日本語の文。", "Last"]
    ids, ends = tok.encode_document(sentences)
    assert ids.tolist() == ref.encode_ordinary("\n".join(sentences))
    assert ends.dtype == np.int64
    starts = [0] + ends[:-1].tolist()
    assert [tok.decode(ids[s:e]) for s, e in zip(starts, ends)] == [s + "\n" for s in sentences[:-1]] + ["Last"]
    # Outer whitespace makes tokens span the newline: the fallback encodes sentence by sentence.
    ids, ends = tok.encode_document(["a ", " b"])
    assert tok.decode(ids[:ends[0]]) == "a \n" and tok.decode(ids[ends[0]:]) == " b"


def _assert_same_encodings(got, want):
    assert len(got) == len(want)
    for (ids, ends), (ref_ids, ref_ends) in zip(got, want):
        assert ids.tolist() == ref_ids.tolist() and np.asarray(ends).tolist() == np.asarray(ref_ends).tolist()


def test_bpe_block_encoding_equals_document_by_document(gpt2_tiktoken, tmp_path):
    from bertgpt_jax.tokenization import corpus

    tok = tokenization.from_file(gpt2_tiktoken)
    calls = []
    real = tok.enc.encode_to_numpy
    tok.enc.encode_to_numpy = lambda *a, **k: calls.append(1) or real(*a, **k)
    docs = list(corpus.read_documents("default"))[:120] + [[t] for t in MIXED[:9] if t.strip() == t]
    docs += [[" ".join(t.split()) or "x" for t in _random_texts(6, seed)] for seed in range(30)]
    _assert_same_encodings(tok.encode_documents(docs), [tok.encode_document(d) for d in docs])
    assert len(calls) == 1 + len(docs)  # the block went through tiktoken in one call
    odd_docs = [_random_texts(5, seed) for seed in range(30)]  # control characters, newlines, outer spaces
    _assert_same_encodings(tok.encode_documents(odd_docs), [tok.encode_document(d) for d in odd_docs])
    # Documents that break the rule (outer whitespace, newlines inside a sentence, an empty sentence,
    # whitespace runs that take the newline along) are encoded one by one, with the same result.
    for odd in (["  leading", "b"], ["trailing ", "b"], ["a\nb", "c"], ["a", "", "b"], ["a \u3000", "b"],
                ["\n"], ["x"]):
        block = docs[:3] + [odd] + docs[3:5]
        _assert_same_encodings(tok.encode_documents(block), [tok.encode_document(d) for d in block])
    lower = bpe.ByteLevelBPETokenizer(tok.ranks, tok.special_tokens, lowercase=True)
    _assert_same_encodings(lower.encode_documents(docs[:40]), [lower.encode_document(d) for d in docs[:40]])


def _gpt2_style_files(ranks, directory, limit, permute):
    """vocab.json + merges.txt for the first ``limit`` GPT-2 ranks (merges recovered from the ranks)."""
    table = bpe.byte_to_unicode()
    kept = {t: r for t, r in ranks.items() if r < limit}
    ids = np.arange(limit + 1)
    if permute:  # ids not in merge order, as in some published vocab.json files
        ids = np.random.default_rng(0).permutation(limit + 1)

    def split(token, rank):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(kept.get(parts[i] + parts[i + 1], 1 << 30), i) for i in range(len(parts) - 1)]
            best, i = min(pairs)
            if best >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    merges = []
    for token, rank in sorted(kept.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            a, b = split(token, rank)
            merges.append("".join(table[x] for x in a) + " " + "".join(table[x] for x in b))
    vocab = {"".join(table[x] for x in t): int(ids[r]) for t, r in kept.items()}
    vocab["<|endoftext|>"] = int(ids[limit])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return ids


@pytest.mark.parametrize("permute", [False, True])
def test_bpe_from_vocab_json_and_merges(gpt2_tiktoken, tmp_path, permute):
    import tiktoken

    _, ranks = _gpt2_reference(gpt2_tiktoken)
    limit = 3000
    ids = _gpt2_style_files(ranks, str(tmp_path / "gpt2"), limit, permute)
    tok = tokenization.from_file(str(tmp_path / "gpt2"))
    small = tiktoken.Encoding("small", pat_str=bpe.GPT2_PATTERN,
                              mergeable_ranks={t: r for t, r in ranks.items() if r < limit}, special_tokens={})
    assert tok.eos_token_id == int(ids[limit]) and tok.vocab_size == limit + 1
    for text in MIXED:
        assert tok.encode(text) == [int(ids[r]) for r in small.encode_ordinary(text)]
        assert tok.decode(tok.encode(text)) == text
    again = tokenization.from_file(tok.save(str(tmp_path / "saved")))
    assert again.fingerprint == tok.fingerprint and again.encode(MIXED[0]) == tok.encode(MIXED[0])
    # The same vocabulary as an HF tokenizer.json loads to the same tokenizer.
    from tokenizers import Tokenizer, models, pre_tokenizers

    files = tmp_path / "gpt2"
    hf = Tokenizer(models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.save(str(tmp_path / "tokenizer.json"))
    from_json = tokenization.from_file(str(tmp_path / "tokenizer.json"))
    assert from_json.fingerprint == tok.fingerprint


def _sentences():
    from bertgpt_jax.tokenization import corpus

    out = []
    for doc in corpus.read_documents("default"):
        out.extend(doc)
        if len(out) > 4000:
            return out + ["日本語の文章は空白なしで書かれます。", "東京は日本の首都です。"] * 50


@pytest.fixture(scope="module")
def sentences():
    return _sentences()


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "sentencepiece"])
def test_train_each_kind(sentences, tmp_path, kind):
    tok = tokenization.train_tokenizer(sentences, kind=kind, vocab_size=800, do_lower_case=True)
    assert tok.kind == kind and 600 <= tok.vocab_size <= 800
    assert tok.encode("The Module returns") == tok.encode("the module returns")
    text = "the function returns a new object"
    ids = tok.encode(text)
    assert 0 < len(ids) < len(text) // 2  # learned merges, not characters
    assert max(ids) < tok.vocab_size and tok.decode(ids).strip() == text
    if kind == "wordpiece":
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == \
            (0, 1, 2, 3, 4)
    elif kind == "bpe":
        assert tok.eos_token_id == tok.vocab_size - 1
        assert tok.decode(tok.encode("İstanbul Ünïcode")) == "İstanbul Ünïcode".lower()
    else:
        assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (0, 1, 2)
        assert [tok.id_to_token(i) for i in (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id)] == \
            ["[CLS]", "[SEP]", "[MASK]"]
        assert tok.tokenize("[MASK]") == ["▁", "[MASK]"] or tok.tokenize("[MASK]") == ["[MASK]"]
    saved = tokenization.from_file(tok.save(str(tmp_path / kind)))
    assert saved.fingerprint == tok.fingerprint and saved.encode(text) == ids
    table = tok.word_start_table()
    assert table.shape == (tok.vocab_size,) and 0 < table.sum() < tok.vocab_size
    cased = tokenization.train_tokenizer(sentences[:1500], kind=kind, vocab_size=800, do_lower_case=False)
    assert cased.encode("The") != cased.encode("the")


def _spm_bpe_reference(sp, text):
    """SentencePiece's BPE encoding written out from its definition (not the library's encoder): spaces become
    U+2581 with one in front, then the adjacent pair whose concatenation is the highest-scoring piece is merged
    (leftmost on ties) until no pair is a piece. Pieces and scores come from the model file."""
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))}
    symbols = list("\u2581" + "\u2581".join(text.split()))
    while True:
        best = None
        for i in range(len(symbols) - 1):
            merged = symbols[i] + symbols[i + 1]
            if merged in scores and (best is None or scores[merged] > best[0]):
                best = (scores[merged], i)
        if best is None:
            return symbols
        i = best[1]
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]


def test_sentencepiece_bpe_matches_its_definition(sentences, tmp_path):
    import sentencepiece

    tok = tokenization.train_tokenizer(sentences, kind="sentencepiece", vocab_size=700,
                                       sentencepiece_model_type="bpe", do_lower_case=True)
    path = tok.save(str(tmp_path))
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(path, "spm.model")
                                              if os.path.isdir(path) else path)
    texts = [s.lower() for s in sentences[:200] if s.isascii() and "[" not in s and s.strip()][:60]
    assert len(texts) >= 30
    for text in texts:
        assert tok.tokenize(text) == _spm_bpe_reference(sp, text), text


def test_sentencepiece_model_file_matches_the_library(sentences, tmp_path):
    import sentencepiece

    tok = tokenization.train_tokenizer(sentences, kind="sentencepiece", vocab_size=700,
                                       sentencepiece_model_type="bpe")
    tok.save(str(tmp_path))
    path = str(tmp_path / "spm.model")
    loaded = tokenization.from_file(path)
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    for text in MIXED[:8] + ["東京は日本の首都です。"]:
        assert loaded.encode(text) == sp.encode(text)
        assert loaded.tokenize(text) == sp.encode(text, out_type=str)
    jp = loaded.tokenize("東京は日本の首都です。")
    assert any(len(p.lstrip("▁")) >= 2 for p in jp), jp  # pieces span characters with no space between


def test_train_cli(tmp_path):
    corpus_file = tmp_path / "c.txt"
    corpus_file.write_text("\n\n".join("The cat sat on mat number %d.\nDogs bark at %d cats." % (i, i)
                                       for i in range(300)), encoding="utf-8")
    out = tmp_path / "tok"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-m", "bertgpt_jax.tokenization", "train",
                           f"--input_file={corpus_file}", f"--output_dir={out}", "--kind=wordpiece",
                           "--vocab_size=300", "--nodo_lower_case"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tok = tokenization.from_file(str(out))
    assert tok.kind == "wordpiece" and not tok.do_lower_case and tok.vocab_size <= 300
    assert "cat" in tok.vocab and "The" in tok.vocab


def test_bad_tokenizer_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenization.from_file(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no tokenizer"):
        tokenization.from_file(str(tmp_path / "empty"))
    bad_model = tmp_path / "bad.model"
    bad_model.write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        tokenization.from_file(str(bad_model))
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        tokenization.from_file(str(bad_json))
    bad_ranks = tmp_path / "x.tiktoken"
    bad_ranks.write_bytes(b"@@@ notanumber\n")
    with pytest.raises(ValueError, match="not a tiktoken rank line"):
        tokenization.from_file(str(bad_ranks))
    no_unk = tmp_path / "vocab.txt"
    no_unk.write_text("[PAD]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no unknown token"):
        tokenization.from_file(str(no_unk))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenization.train_tokenizer(["a"], kind="charpiece")
