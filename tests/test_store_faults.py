"""Token stores and the tokenization stage under faults and bad input: a changed input is never resumed,
manifests that disagree with their shards are refused by name, damaged shards and caches are named,
failed cache builds leave nothing behind, empty or binary inputs are caught, and the CLIs report user
errors without tracebacks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bertgpt_jax import create_pretraining_data as cpd
from bertgpt_jax.data import flat_tokens, token_store


def _corpus(path, num_docs=60, seed=0, marker=""):
    rng = np.random.default_rng(seed)
    words = ["the", "model", "learns", "tokens", "data", "naïve", "über", "north", "river", "stone"]
    docs = ["\n".join(" ".join(rng.choice(words, int(rng.integers(3, 10)))) + f" {marker}doc{d}."
                      for _ in range(int(rng.integers(1, 5)))) for d in range(num_docs)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def vocab(minilm_dir):
    return os.path.join(minilm_dir, "vocab.txt")


def _kw(vocab):
    return dict(vocab_file=vocab, num_workers=0, max_shard_tokens=150, progress=False, validation_fraction=0.2,
                unit_bytes=400)


@pytest.fixture(scope="module")
def store(tmp_path_factory, vocab):
    tmp = tmp_path_factory.mktemp("stores")
    _corpus(tmp / "c.txt")
    return cpd.create_token_store(str(tmp / "c.txt"), str(tmp / "store"), **_kw(vocab))


def _docs(store_dir, split):
    return [(t.tolist(), e.tolist()) for t, e in token_store.TokenStore(store_dir).documents(split)]


def test_a_changed_input_is_not_resumed(tmp_path, vocab, monkeypatch, capsys):
    src = tmp_path / "c.txt"
    _corpus(src)
    crashed = str(tmp_path / "crash")
    real_finish, finished = cpd._SplitWriter.finish, []

    def finish_then_crash(self):
        real_finish(self)
        finished.append(1)
        if len(finished) == 3:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(cpd._SplitWriter, "finish", finish_then_crash)
    with pytest.raises(KeyboardInterrupt):
        cpd.create_token_store(str(src), crashed, **_kw(vocab))
    monkeypatch.undo()
    stat = os.stat(src)
    _corpus(src, seed=1, marker="new")  # edited in place: other text
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old modification time
    capsys.readouterr()
    cpd.create_token_store(str(src), crashed, **_kw(vocab))
    assert "the input changed since the interrupted run" in capsys.readouterr().err
    clean = cpd.create_token_store(str(src), str(tmp_path / "clean"), **_kw(vocab))
    for split in ("train", "validation"):
        assert _docs(crashed, split) == _docs(clean, split)
    # A complete store of the old text is not passed off as the new one either.
    _corpus(src, seed=2)
    with pytest.raises(ValueError, match="earlier version of the input"):
        cpd.create_token_store(str(src), crashed, **_kw(vocab))


def _edited_copy(store, tmp_path, edit):
    out = str(tmp_path / "edited")
    shutil.copytree(store, out)
    path = os.path.join(out, token_store.MANIFEST)
    manifest = json.load(open(path))
    edit(manifest)
    json.dump(manifest, open(path, "w"))
    return out, path


def test_store_records_its_largest_ids(store):
    m = token_store.TokenStore(store).manifest
    for split in ("train", "validation"):
        ids = [t for tokens, _ in _docs(store, split) for t in tokens]
        assert m["splits"][split]["max_token_id"] == max(ids) and len(m["splits"][split]["shards"]) >= 2


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["splits"]["train"]["shards"].pop(), "does not list shard train-"),
    (lambda m: m["splits"]["train"]["shards"].append(m["splits"]["validation"]["shards"].pop()),
     "lists shard validation-.* under 'train', but its record .* 'validation'"),
    (lambda m: m["splits"]["validation"]["shards"].append(m["splits"]["train"]["shards"][0]),
     "listed under both 'train' and 'validation'"),
    (lambda m: m["splits"]["train"].update(max_token_id=m["tokenizer"]["vocab_size"]),
     "split 'train' holds token id 30522, outside the vocabulary"),
    (lambda m: m["tokenizer"].update(mask_token_id=m["tokenizer"]["vocab_size"] + 5),
     "mask_token_id 30527 lies outside the vocabulary"),
    (lambda m: m["splits"]["train"].update(documents=m["splits"]["train"]["documents"] - 1),
     "claims .* documents, its shards' records hold"),
], ids=["dropped", "wrong_split", "both_splits", "ids_beyond_vocab", "mask_beyond_vocab", "doc_count"])
def test_a_manifest_that_disagrees_with_its_shards_is_refused(store, tmp_path, edit, message):
    out, path = _edited_copy(store, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as e:
        token_store.TokenStore(out)
    assert path in str(e.value)


def test_damaged_files_are_named(store, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(store, out)
    path = os.path.join(out, token_store.MANIFEST)
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        token_store.TokenStore(out)
    open(path, "w").write(text)
    shard = os.path.join(out, token_store.TokenStore(out).manifest["splits"]["train"]["shards"][0])
    with open(shard, "r+b") as f:
        f.seek(20)
        f.write(b"\xa5" * 64)
    with pytest.raises(ValueError, match=f"token store shard {shard} cannot be read"):
        flat_tokens.load(token_store.TokenStore(out), "train", cache_dir=str(tmp_path / "cache"))


def test_cache_with_ids_outside_the_vocabulary_is_refused(store, tmp_path):
    s = token_store.TokenStore(store)
    cache = str(tmp_path / "cache")
    flat = flat_tokens.load(s, "validation", cache_dir=cache)
    path = flat.prefix + ".tokens"
    del flat
    with open(path, "r+b") as f:
        f.write(np.array([65535], "<u2").tobytes())
    with pytest.raises(ValueError, match=f"{path} holds token id 65535, outside the vocabulary of 30522"):
        flat_tokens.load(s, "validation", cache_dir=cache)


def test_a_failed_cache_build_leaves_no_temporary_files(store, tmp_path, monkeypatch):
    def full_disk(store, split, files):
        files["tokens"].write(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flat_tokens, "_fill", full_disk)
    cache = str(tmp_path / "cache")
    with pytest.raises(OSError, match=f"cannot write the pipeline cache {cache}/validation-.* in {cache}"):
        flat_tokens.load(token_store.TokenStore(store), "validation", cache_dir=cache)
    assert os.listdir(cache) == []


def test_empty_and_binary_inputs(tmp_path, vocab, capsys):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        cpd.create_token_store(str(tmp_path / "empty.txt"), str(tmp_path / "e"), progress=False)
    assert not os.path.exists(tmp_path / "e" / "tokenizer")  # refused before training a vocabulary
    (tmp_path / "blank.txt").write_text("\n\n\n")
    with pytest.raises(ValueError, match="yielded no document"):
        cpd.create_token_store(str(tmp_path / "blank.txt"), str(tmp_path / "b"), vocab_file=vocab, progress=False)
    assert not os.path.exists(tmp_path / "b" / token_store.MANIFEST)
    rng = np.random.default_rng(0)
    (tmp_path / "binary.bin").write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    capsys.readouterr()
    cpd.create_token_store(str(tmp_path / "binary.bin"), str(tmp_path / "bin"), vocab_file=vocab, progress=False)
    assert "are not valid UTF-8 text: is it a binary file?" in capsys.readouterr().err


def test_progress_is_plain_lines_when_output_is_not_a_terminal(tmp_path, vocab):
    _corpus(tmp_path / "c.txt", num_docs=20)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from bertgpt_jax import create_pretraining_data as c; "
         "c.create_token_store(sys.argv[1], sys.argv[2], vocab_file=sys.argv[3], num_workers=0)",
         str(tmp_path / "c.txt"), str(tmp_path / "s"), vocab],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tokenizing:")]
    assert lines and "\r" not in proc.stderr and "100%" in lines[-1], proc.stderr[-2000:]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))


@pytest.mark.parametrize("module,bad_args,message", [
    ("bertgpt_jax.create_pretraining_data", ["--input_file=/nonexistent/x.txt", "--output_dir=OUT"],
     "does not exist"),
    ("bertgpt_jax.tokenization", ["train", "--input_file=/nonexistent/x.txt", "--output_dir=OUT"],
     "does not exist"),
    ("bertgpt_jax.convert", ["--from_hf=/nonexistent", "--to_hf=OUT"], "nonexistent"),
])
def test_cli_user_errors_exit_2_without_traceback_and_help_exits_0(module, bad_args, message, tmp_path):
    proc = _cli(module, *[a.replace("OUT", str(tmp_path / "out")) for a in bad_args])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    help_proc = _cli(module, "--help")
    assert help_proc.returncode == 0 and "--" in help_proc.stdout + help_proc.stderr


_WRITER = """
import sys, time
import numpy as np
from bertgpt_jax import atomic_files
from bertgpt_jax.data import token_store

kind, path = sys.argv[1], sys.argv[2]

def records():
    for i in range(1000):
        if i == 50:
            print("writing", flush=True)
            time.sleep(120)  # killed here, mid-write
        yield token_store.encode_document(np.arange(i % 7 + 1), [i % 7 + 1], np.dtype("<u2"))

if kind == "shard":
    token_store.write_shard(path, records())
else:
    with atomic_files.atomic_open(path, "w", encoding="utf-8") as f:
        for i, _ in enumerate(records()):
            f.write(f"line {i}\\n")
            f.flush()
"""


@pytest.mark.parametrize("kind", ["shard", "text"])
def test_a_writer_killed_mid_write_never_leaves_a_file_that_looks_complete(tmp_path, kind):
    path = str(tmp_path / ("train-00000-of-00001.array_record" if kind == "shard" else "manifest.json"))
    if kind == "text":
        open(path, "w").write("the complete old version\n")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, path], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert proc.stdout.readline().strip() == "writing"
        partial = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        assert len(partial) == 1  # the data goes to a temporary name beside the target
        if kind == "text":
            assert os.path.getsize(tmp_path / partial[0]) > 0
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    if kind == "shard":
        assert not os.path.exists(path)
    else:
        assert open(path).read() == "the complete old version\n"
