"""Suffix embeddings for LVD: for a window x_1..x_T and each position t, a vector that depends
on the suffix x_t..x_T only (what the hidden state at t must still generate).

Two modes:

- ``masked`` (default): one encoder pass per window. Word pieces of word i attend to the pieces
  of words j >= i and to [CLS] and [SEP]; [CLS] and [SEP] attend only to each other (else
  they carry the prefix into later states from the second layer on); position ids are counted
  from the sequence end against a fixed length M, so they do not depend on how the prefix splits
  into pieces. The state of word t's first piece is its suffix embedding.
- ``exact``: each suffix ``[CLS] x_t..x_T [SEP]`` is encoded as its own ordinary sequence
  (T passes per window; the LVD paper's definition) and its first piece is read out.

Words are tokenised one at a time (as ``is_split_into_words=True`` does), so a vocabulary-wide
table ``word id -> pieces`` built once replaces per-window tokenisation; each word keeps at most
``max_pieces_per_word`` pieces.

:func:`embed_windows` computes the embeddings of a whole :class:`TokenWindows` into a float16
memmap on disk, chunk by chunk, resuming after a crash and reusing finished work; each finished
chunk's SHA-256 is recorded and checked before reuse, and runs sharing a cache entry take turns
under its lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from hmmlvd.core import distributed, persist
from hmmlvd.core.atomic import atomic_write_json, read_small_json
from hmmlvd.core.errors import DataError, EncoderError
from hmmlvd.data.vocab import Vocabulary
from hmmlvd.data.windows import TokenWindows
from hmmlvd.lvd.text.encoder import Encoder, check_tokenizer, word_to_text

SUFFIX_MODES = ("masked", "exact")
DEFAULT_MAX_PIECES = 4
CACHE_VERSION = 1
F16_MAX = float(np.finfo(np.float16).max)
# Files of a cache entry ``<cache_dir>/<key>/``.
DATA_FILE, META_FILE = "embeddings.f16", "meta.json"
CHUNKS_FILE, PROGRESS_FILE, LOCK_FILE = "chunks.json", "progress.json", "lock"
MAX_RECORD_BYTES = 64 * 2**20  # a larger meta or chunk record is damaged: not read
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # the file system cannot lock


# ----- word -> word-piece table --------------------------------------------------------------
@dataclass(frozen=True)
class PieceTable:
    """Word pieces of every vocabulary word: ``pieces`` [V, P] int64 (padded with the pad id),
    ``lengths`` [V] int64 in 1..P, and the special token ids."""

    pieces: torch.Tensor
    lengths: torch.Tensor
    cls_id: int
    sep_id: int
    pad_id: int

    @property
    def max_pieces(self) -> int:
        """P, the most pieces a word keeps."""
        return int(self.pieces.shape[1])

    def digest(self) -> str:
        """SHA-256 of the table: changes with the vocabulary, tokenizer and piece cap."""
        h = hashlib.sha256()
        for t in (self.pieces, self.lengths):
            h.update(t.numpy().tobytes())
        h.update(f"{self.cls_id},{self.sep_id},{self.pad_id}".encode())
        return h.hexdigest()


def _unpadded_backend(tokenizer) -> Tokenizer:
    """A copy of the tokenizer's Rust backend with padding and truncation switched off.

    A ``tokenizer.json`` may carry them switched on (the packaged MiniLM's pads every encoding
    to 128 tokens); the backend then pads each word with [PAD] pieces, which the piece cap kept
    as word pieces. The transformers call switches them off per call; so does this copy."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def build_piece_table(vocab: Vocabulary, tokenizer,
                      max_pieces_per_word: int = DEFAULT_MAX_PIECES) -> PieceTable:
    """Tokenise every vocabulary word (WikiText conventions mapped by ``word_to_text``) on its
    own, as ``is_split_into_words=True`` does inside a window, whatever padding or truncation
    the tokenizer's files switch on; keep at most ``max_pieces_per_word`` pieces; a word with
    no pieces becomes the unknown token."""
    if max_pieces_per_word < 1:
        raise DataError(f"max_pieces_per_word must be >= 1, got {max_pieces_per_word}")
    check_tokenizer(tokenizer, getattr(tokenizer, "name_or_path", "?"))
    texts = [[word_to_text(w, tokenizer)] for w in vocab.tokens]
    # The Rust tokenizer directly: the same ids as tokenizer(texts, is_split_into_words=True,
    # add_special_tokens=False), 5x faster on a 33k-word vocabulary.
    encoded = _unpadded_backend(tokenizer).encode_batch(texts, is_pretokenized=True,
                                                        add_special_tokens=False)
    return piece_table_from_encodings(encoded, tokenizer, max_pieces_per_word)


def piece_table_from_encodings(encoded: list, tokenizer, max_pieces_per_word: int) -> PieceTable:
    """The :class:`PieceTable` of one backend encoding per vocabulary word (each cut to
    ``max_pieces_per_word`` ids; an empty one becomes the unknown token)."""
    pieces = torch.full((len(encoded), max_pieces_per_word), tokenizer.pad_token_id,
                        dtype=torch.int64)
    lengths = torch.empty(len(encoded), dtype=torch.int64)
    for i, enc in enumerate(encoded):
        ids = enc.ids[:max_pieces_per_word] or [tokenizer.unk_token_id]
        pieces[i, :len(ids)] = torch.as_tensor(ids)
        lengths[i] = len(ids)
    return PieceTable(pieces, lengths, int(tokenizer.cls_token_id), int(tokenizer.sep_token_id),
                      int(tokenizer.pad_token_id))


# ----- masked mode: one pass per window ------------------------------------------------------
@dataclass
class WindowLayout:
    """Windows laid out as ``[CLS] pieces... [SEP] [PAD]...``: ``input_ids`` [B, L],
    ``word`` [B, L] (word index 0..T-1 of each piece, T for [SEP], -1 for [CLS] and padding),
    ``first`` [B, T] (index of each word's first piece), ``length`` [B] (tokens n incl. specials).
    """

    input_ids: torch.Tensor
    word: torch.Tensor
    first: torch.Tensor
    length: torch.Tensor


def layout_windows(x: torch.Tensor, table: PieceTable) -> WindowLayout:
    """Pieces of windows ``x`` [B, T] (word ids) packed into one padded batch [B, L]."""
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(f"windows must be a [B, T] tensor of word ids, got shape {tuple(x.shape)}")
    vocab_size = table.lengths.shape[0]
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise DataError(f"word ids must lie in [0, {vocab_size}), got [{int(x.min())}, "
                        f"{int(x.max())}]")
    x = x.long().cpu()
    b, t = x.shape
    lengths, pieces = table.lengths[x], table.pieces[x]  # [B, T], [B, T, P]
    first = 1 + torch.cumsum(lengths, 1) - lengths  # [B, T]
    n = 2 + lengths.sum(1)  # [B]
    valid = torch.arange(table.max_pieces) < lengths[..., None]  # [B, T, P]
    rows = torch.arange(b)[:, None, None].expand_as(valid)[valid]
    cols = (first[..., None] + torch.arange(table.max_pieces))[valid]
    input_ids = torch.full((b, int(n.max())), table.pad_id, dtype=torch.int64)
    word = torch.full_like(input_ids, -1)
    input_ids[:, 0] = table.cls_id
    input_ids[rows, cols] = pieces[valid]
    word[rows, cols] = torch.arange(t).expand(b, t)[..., None].expand_as(valid)[valid]
    input_ids[torch.arange(b), n - 1] = table.sep_id
    word[torch.arange(b), n - 1] = t
    return WindowLayout(input_ids, word, first, n)


def suffix_attention_mask(layout: WindowLayout) -> torch.Tensor:
    """Boolean mask [B, L, L], True where query q may attend to key k.

    A piece of word i sees pieces of words j >= i, [CLS] and [SEP]; [CLS] and [SEP] see only
    [CLS] and [SEP], so their states are the same for every window and carry no prefix; no real
    token sees padding (a padding query sees itself, to keep the softmax finite). Letting pieces
    see [CLS] (as every token does in an ordinary pass) brings masked embeddings much closer to
    exact ones: mean cosine 0.82 instead of 0.53 with the packaged MiniLM on WikiText-2
    (T=32).
    """
    idx = torch.arange(layout.input_ids.shape[1])
    real = idx < layout.length[:, None]  # [B, L]
    is_cls = (idx == 0).expand_as(real)
    is_sep = idx == (layout.length[:, None] - 1)
    is_piece = real & ~is_cls & ~is_sep
    special = is_cls | is_sep
    later = layout.word[:, None, :] >= layout.word[:, :, None]  # [B, q, k]: word(k) >= word(q)
    piece_q = is_piece[:, :, None] & ((is_piece | is_sep)[:, None, :] & later | is_cls[:, None])
    special_q = special[:, :, None] & special[:, None, :]
    pad_q = (~real)[:, :, None] & torch.eye(len(idx), dtype=torch.bool)
    return piece_q | special_q | pad_q


def end_position_ids(layout: WindowLayout, num_positions: int) -> torch.Tensor:
    """Position ids [B, L]: [CLS] 0, token i of a window with n tokens M - (n - i), where
    M = ``num_positions``; padding 0. A suffix's tokens get the same ids whatever precedes it."""
    idx = torch.arange(layout.input_ids.shape[1])
    pos = num_positions - (layout.length[:, None] - idx)
    pos = torch.where(idx < layout.length[:, None], pos, torch.zeros_like(pos))
    pos[:, 0] = 0
    return pos


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask [B, L, L] -> additive float mask [B, 1, L, L] (0 where allowed, dtype's min
    elsewhere): the 4-D form transformers passes unchanged to eager and SDPA attention."""
    out = torch.zeros(mask.shape, dtype=dtype)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]


def masked_positions(length: int, max_pieces: int,
                     max_positions: int | None = None) -> int:
    """Default M = 2 + T * max_pieces (so every window's token count n <= M), capped at the
    encoder's ``max_positions``."""
    m = 2 + length * max_pieces
    return m if max_positions is None else min(m, max_positions)


def _check_positions(encoder: Encoder, num_positions: int, needed: int) -> None:
    """Raise :class:`EncoderError` when a window's ``needed`` tokens do not fit in M positions
    or M exceeds the encoder's position table."""
    if num_positions > encoder.max_positions:
        raise EncoderError(f"num_positions={num_positions} exceeds the {encoder.max_positions} "
                           f"positions of encoder {encoder.name}")
    if needed > num_positions:
        raise EncoderError(f"a window has {needed} word pieces with [CLS]/[SEP], more than the "
                           f"{num_positions} positions available (encoder {encoder.name}); "
                           "use shorter windows or a lower max_pieces_per_word")


def _first_piece_states(hidden: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Hidden states [B, L, D] at indices ``first`` [B, T] -> float32 CPU [B, T, D]."""
    index = first.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index).float().cpu()


def masked_suffix_embeddings(encoder: Encoder, x: torch.Tensor, table: PieceTable,
                             num_positions: int | None = None) -> torch.Tensor:
    """Suffix embeddings [B, T, D] (float32) of windows ``x`` [B, T], one encoder pass.

    ``num_positions``: M of the end-counted position ids (default 2 + T * max_pieces, at most
    the encoder's positions); a window encoded with the same M as a longer window that ends
    with it gets equal embeddings.
    """
    layout = layout_windows(x, table)
    m = num_positions or masked_positions(x.shape[1], table.max_pieces, encoder.max_positions)
    _check_positions(encoder, m, int(layout.length.max()))
    dtype = next(encoder.model.parameters()).dtype
    mask = additive_mask(suffix_attention_mask(layout), dtype)
    with torch.inference_mode():
        out = encoder.model(input_ids=layout.input_ids.to(encoder.device),
                            attention_mask=mask.to(encoder.device),
                            position_ids=end_position_ids(layout, m).to(encoder.device),
                            token_type_ids=torch.zeros_like(layout.input_ids).to(encoder.device))
    return _first_piece_states(out.last_hidden_state, layout.first)


# ----- exact mode: one pass per suffix -------------------------------------------------------
def suffix_batch(layout: WindowLayout, t: int, cls_id: int,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The suffixes starting at word ``t`` of every window as ordinary sequences
    ``[CLS] pieces of words t.. [SEP]``: ``input_ids`` [B, L_t] and padding mask [B, L_t]."""
    start = layout.first[:, t]  # [B]: index of word t's first piece
    body = layout.length - start  # [B]: pieces of words t.. plus [SEP]
    width = 1 + int(body.max())
    j = torch.arange(width - 1)
    src = (start[:, None] + j).clamp(max=layout.input_ids.shape[1] - 1)
    taken = layout.input_ids.gather(1, src)
    keep = j < body[:, None]
    ids = torch.cat([torch.full((len(start), 1), cls_id, dtype=torch.int64),
                     torch.where(keep, taken, torch.full_like(taken, pad_id))], 1)
    mask = torch.cat([torch.ones(len(start), 1, dtype=torch.int64), keep.long()], 1)
    return ids, mask


def exact_suffix_embeddings(encoder: Encoder, x: torch.Tensor,
                            table: PieceTable) -> torch.Tensor:
    """Suffix embeddings [B, T, D] (float32): each suffix ``x_t..x_T`` encoded on its own with
    standard attention and positions, first piece read out; one pass per position t, batched
    over the B windows (suffixes of one t have similar lengths, so little padding)."""
    layout = layout_windows(x, table)
    _check_positions(encoder, encoder.max_positions, int(layout.length.max()))
    out = []
    with torch.inference_mode():
        for t in range(x.shape[1]):
            ids, mask = suffix_batch(layout, t, table.cls_id, table.pad_id)
            hidden = encoder.model(input_ids=ids.to(encoder.device),
                                   attention_mask=mask.to(encoder.device),
                                   token_type_ids=torch.zeros_like(ids).to(encoder.device))
            out.append(hidden.last_hidden_state[:, 1].float().cpu())
    return torch.stack(out, 1)


def suffix_embeddings(encoder: Encoder, x: torch.Tensor, vocab: Vocabulary | PieceTable,
                      mode: str = "masked", max_pieces_per_word: int = DEFAULT_MAX_PIECES,
                      num_positions: int | None = None) -> torch.Tensor:
    """Suffix embeddings [B, T, D] (float32, CPU) of word-id windows ``x`` [B, T].

    ``vocab``: the :class:`Vocabulary` of the ids (or a prebuilt :class:`PieceTable`, which then
    fixes the piece cap). ``mode``: ``masked`` (one pass per window) or ``exact`` (one pass per
    suffix). ``num_positions``: masked mode's M (see :func:`masked_suffix_embeddings`).
    """
    check_mode(mode)
    table = (vocab if isinstance(vocab, PieceTable)
             else build_piece_table(vocab, encoder.tokenizer, max_pieces_per_word))
    if mode == "masked":
        return masked_suffix_embeddings(encoder, x, table, num_positions)
    return exact_suffix_embeddings(encoder, x, table)


def check_mode(mode: str) -> None:
    """Raise :class:`DataError` for a mode other than ``masked`` / ``exact``."""
    if mode not in SUFFIX_MODES:
        raise DataError(f"suffix embedding mode must be one of {SUFFIX_MODES}, got {mode!r}")


# ----- on-disk cache -------------------------------------------------------------------------
def _weights_fingerprint(model: torch.nn.Module) -> str:
    """Cheap digest of the weights: name, shape and the first 64 values of every tensor."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _encoder_identity(encoder: Encoder) -> dict:
    """What fixes the encoder's numbers: its name, config (minus bookkeeping) and weights."""
    config = {k: v for k, v in encoder.model.config.to_dict().items()
              if not k.startswith("_") and k not in {"transformers_version", "name_or_path"}}
    return {"name": encoder.name, "config": json.dumps(config, sort_keys=True, default=str),
            "dtype": str(next(encoder.model.parameters()).dtype),
            "weights": _weights_fingerprint(encoder.model)}


def _windows_identity(windows: TokenWindows) -> dict:
    """Digest of the token stream, the window length and the chosen window starts."""
    starts = windows.starts
    return {"length": windows.length, "count": len(windows),
            "stream": hashlib.sha256(windows.stream.tobytes()).hexdigest(),
            "starts": None if starts is None else hashlib.sha256(
                np.ascontiguousarray(starts, dtype=np.int64).tobytes()).hexdigest()}


def cache_key(encoder: Encoder, windows: TokenWindows, table: PieceTable, mode: str) -> dict:
    """The inputs the cached embeddings depend on, plus ``key`` =
    :func:`hmmlvd.core.persist.cache_key` of them (24 hex digits of their SHA-256)."""
    inputs = {"version": CACHE_VERSION, "mode": mode, "max_pieces": table.max_pieces,
              "encoder": _encoder_identity(encoder), "windows": _windows_identity(windows),
              "pieces": table.digest()}
    return {"key": persist.cache_key(inputs), **inputs}


def max_window_tokens(windows: TokenWindows, table: PieceTable) -> int:
    """Most tokens (pieces + [CLS] + [SEP]) of any window, from sliding sums of piece counts
    over the stream: checked before a long run rather than failing in its middle."""
    if int(windows.stream.max()) >= len(table.lengths) or int(windows.stream.min()) < 0:
        raise DataError(f"token stream has ids outside the vocabulary [0, {len(table.lengths)})")
    counts = table.lengths[torch.from_numpy(windows.stream.astype(np.int64))]
    csum = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    sums = csum[windows.length:] - csum[:-windows.length]  # [num starts]
    if windows.starts is not None:
        sums = sums[torch.from_numpy(windows.starts.astype(np.int64))]
    return 2 + int(sums.max())


def length_sorted_batches(x: torch.Tensor, table: PieceTable,
                          batch_size: int) -> list[torch.Tensor]:
    """Row indices of windows ``x`` [N, T] in batches of ``batch_size`` (int64, each [<= B]),
    windows sorted by token count (stable): a batch pads to its longest window, so batches of
    similar counts waste little compute on padding (about 20% otherwise on WikiText-2); no
    batch for N = 0."""
    order = torch.argsort(table.lengths[x.long()].sum(1), stable=True)
    return list(order.split(batch_size)) if len(order) else []


# ----- the cache entry: lock, store, per-chunk records ---------------------------------------
@contextmanager
def _entry_lock(folder: Path) -> Iterator[None]:
    """Hold the cache entry's exclusive lock (``flock`` on ``folder/lock``) while the block
    runs; while another process holds it, say so on stderr and wait. The kernel releases the
    lock when its holder ends, however it ends. On a file system without locks, warn and go on
    (the chunk checksums still keep damaged data out)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    with open(path, "a+b") as handle:  # "a": created if missing, never truncated
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"hmmlvd: waiting for another process writing the embedding cache {folder} "
                  f"(it holds {path})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            print(f"hmmlvd: warning: cannot lock the embedding cache {folder} ({exc.strerror}):"
                  " runs sharing it may compute the same chunks twice", file=sys.stderr)
        yield


def _read_records(folder: Path, chunk_size: int) -> tuple[int, dict[int, str]]:
    """The entry's chunk size and the recorded SHA-256 of each finished chunk, by the chunk's
    first window; (``chunk_size``, no records) when nothing valid is recorded."""
    raw = read_small_json(folder / CHUNKS_FILE, MAX_RECORD_BYTES) or {}
    size, digests = raw.get("chunk_size"), raw.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 \
            or not isinstance(digests, dict):
        return chunk_size, {}
    try:
        return size, {int(lo): str(digest) for lo, digest in digests.items()}
    except ValueError:
        return chunk_size, {}


def _open_data(path: Path, shape: tuple[int, int, int]) -> np.memmap:
    """The entry's float16 store, opened for update (``r+``): what earlier or concurrent runs
    wrote is never truncated. A missing file, or one of the wrong size, is replaced by a new
    zero-filled one, allocated under a temporary name (disk full shows here, not as a SIGBUS
    while writing through the map) and renamed into place. Call it holding the entry's lock."""
    nbytes = int(np.prod(shape)) * 2
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # of a killed lock holder
        leftover.unlink(missing_ok=True)
    if not (path.is_file() and path.stat().st_size == nbytes):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, nbytes)
                else:
                    os.ftruncate(fd, nbytes)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return np.memmap(path, dtype=np.float16, mode="r+", shape=shape)


def _chunk_digest(store: np.memmap, lo: int, hi: int) -> str:
    """SHA-256 of the bytes of windows ``lo..hi-1`` (about 2 GB/s)."""
    return hashlib.sha256(np.ascontiguousarray(store[lo:hi]).view(np.uint8)).hexdigest()


@dataclass
class _Entry:
    """An open cache entry: the ``store``, its ``chunk_size`` and the SHA-256 of each chunk
    verified (or computed) so far, by the chunk's first window."""

    folder: Path
    store: np.memmap
    chunk_size: int
    digests: dict[int, str]

    def bounds(self, lo: int) -> tuple[int, int]:
        """Windows ``lo..hi-1`` of the chunk starting at ``lo``."""
        return lo, min(lo + self.chunk_size, self.store.shape[0])

    def pending(self) -> list[int]:
        """First windows of the chunks not yet verified."""
        return [lo for lo in range(0, self.store.shape[0], self.chunk_size)
                if lo not in self.digests]

    def record(self, starts: list[int]) -> None:
        """Checksum the (flushed) chunks starting at ``starts`` and rewrite the records:
        ``chunks.json`` (chunk size, SHA-256 per finished chunk) and ``progress.json``
        (``windows_done``: the windows before the first unfinished chunk)."""
        for lo in starts:
            self.digests[lo] = _chunk_digest(self.store, *self.bounds(lo))
        atomic_write_json(self.folder / CHUNKS_FILE, {
            "chunk_size": self.chunk_size,
            "sha256": {str(lo): d for lo, d in sorted(self.digests.items())}})
        pending = self.pending()
        done = pending[0] if pending else self.store.shape[0]
        atomic_write_json(self.folder / PROGRESS_FILE, {"windows_done": done})


def _open_entry(folder: Path, shape: tuple[int, int, int], chunk_size: int) -> _Entry:
    """Open the entry's store and verify every recorded chunk against its checksum: a chunk
    with no record (unfinished, or written by a version without checksums) or whose bytes no
    longer match (damaged) is pending again. The recorded chunk size wins over
    ``chunk_size``. Call it holding the entry's lock."""
    size, records = _read_records(folder, chunk_size)
    entry = _Entry(folder, _open_data(folder / DATA_FILE, shape), size, {})
    for lo, digest in records.items():
        if lo % size == 0 and 0 <= lo < shape[0] \
                and _chunk_digest(entry.store, *entry.bounds(lo)) == digest:
            entry.digests[lo] = digest
    return entry


def _write_meta(folder: Path, meta: dict) -> None:
    """Rewrite ``meta.json`` unless it already says exactly ``meta``."""
    if read_small_json(folder / META_FILE, MAX_RECORD_BYTES) != meta:
        atomic_write_json(folder / META_FILE, meta)


def _share_pending(entry: _Entry | None, num_windows: int) -> tuple[int, list[int]]:
    """Rank 0's chunk size and pending chunks on every rank (``entry`` is rank 0's)."""
    chunk_size = distributed.broadcast_int(entry.chunk_size if entry else 0)
    num_chunks = -(-num_windows // chunk_size)
    mask = None
    if entry is not None:
        mask = np.zeros(num_chunks, dtype=np.int8)
        mask[[lo // chunk_size for lo in entry.pending()]] = 1
    mask = distributed.broadcast_array(mask, (num_chunks,), np.int8)
    return chunk_size, [int(i) * chunk_size for i in np.flatnonzero(mask)]


def embed_windows(encoder: Encoder, windows: TokenWindows, vocab: Vocabulary,
                  cache_dir: str | os.PathLike, mode: str = "masked", batch_size: int = 64,
                  chunk_size: int = 4096, max_pieces_per_word: int = DEFAULT_MAX_PIECES,
                  progress: bool = True) -> np.memmap:
    """Suffix embeddings of every window, float16 memmap [N, T, D] (read-only), cached at
    ``cache_dir/<key>/embeddings.f16`` with ``meta.json``; the key hashes the encoder (name,
    config, weights), mode, piece cap, vocabulary tokenisation, window length, stream and starts.

    Work goes in chunks of ``chunk_size`` windows, each run in batches of ``batch_size`` windows
    of similar token counts (sorted within the chunk). After each chunk is flushed, its SHA-256
    is recorded in ``chunks.json`` (and ``progress.json`` says how many leading windows are
    done), atomically. Every run verifies every recorded chunk first: a killed run resumes with
    the unfinished chunks, a damaged chunk is recomputed (never used), and a finished, intact
    cache is returned without calling the encoder.

    Runs sharing ``cache_dir`` take the entry's lock (``flock`` on ``<key>/lock``) for the
    whole check-and-fill: a second run waits (saying so on stderr), then finds the chunks the
    first one finished. The store is opened for update and never truncated.

    Under torchrun every rank calls this with the same windows: rank 0 takes the lock and opens
    (or creates) the store, then the ranks fill disjoint chunks (see :func:`_fill`);
    ``cache_dir`` must be on a file system that every rank sees (one node, or a shared one
    across nodes).
    """
    check_mode(mode)
    if batch_size < 1 or chunk_size < 1:
        raise DataError(f"batch_size and chunk_size must be >= 1, got {batch_size}, {chunk_size}")
    table = build_piece_table(vocab, encoder.tokenizer, max_pieces_per_word)
    limit = (masked_positions(windows.length, table.max_pieces, encoder.max_positions)
             if mode == "masked" else encoder.max_positions)
    _check_positions(encoder, limit, max_window_tokens(windows, table))
    meta = cache_key(encoder, windows, table, mode)
    shape = (len(windows), windows.length, encoder.hidden_size)
    meta.update(shape=list(shape), dtype="float16")
    folder = Path(cache_dir) / meta["key"]
    main = distributed.is_main()
    with _entry_lock(folder) if main else nullcontext():
        entry = _open_entry(folder, shape, chunk_size) if main else None
        chunk_size, pending = _share_pending(entry, shape[0])  # the ranks wait for rank 0 here
        if pending:
            if main:
                _write_meta(folder, meta)
            store = entry.store if main else np.memmap(folder / DATA_FILE, dtype=np.float16,
                                                       mode="r+", shape=shape)
            _fill(store, encoder, windows, table, mode, pending, batch_size, chunk_size,
                  progress, entry.record if main else None)
            del store
        if main:
            _write_meta(folder, {**meta, "complete": True})
        del entry
        distributed.barrier()  # every rank returns a recorded, complete entry
    return np.memmap(folder / DATA_FILE, dtype=np.float16, mode="r", shape=shape)


def _embed_chunk(store: np.memmap, encoder: Encoder, windows: TokenWindows, lo: int, hi: int,
                 table: PieceTable, mode: str, batch_size: int, bar: tqdm) -> None:
    """Compute windows ``lo..hi-1`` into ``store`` in length-sorted batches, then flush."""
    x = windows[lo:hi]  # [C, T]
    for rows in length_sorted_batches(x, table, batch_size):
        emb = suffix_embeddings(encoder, x[rows], table, mode)
        store[lo + rows.numpy()] = np.clip(emb.numpy(), -F16_MAX, F16_MAX).astype(np.float16)
        bar.update(len(rows))
    store.flush()


def _fill(store: np.memmap, encoder: Encoder, windows: TokenWindows, table: PieceTable,
          mode: str, pending: list[int], batch_size: int, chunk_size: int, progress: bool,
          record: Callable[[list[int]], None] | None) -> None:
    """Compute the chunks starting at windows ``pending`` into ``store``, recording each.

    With several ranks the pending chunks are dealt out in rounds of ``world_size``: rank r
    computes the r-th chunk of each round, every rank flushes and meets the others at a
    barrier, then rank 0 checksums and records the whole round (``record``, rank 0's only). A
    killed run thus resumes with any number of ranks."""
    total = len(windows)
    rank, world = distributed.rank(), distributed.world_size()
    left = sum(min(lo + chunk_size, total) - lo for lo in pending)
    bar = tqdm(total=total, initial=total - left, disable=not progress or rank != 0,
               unit="win", desc=f"suffix embeddings ({mode})", dynamic_ncols=True)
    for first in range(0, len(pending), world):
        round_starts = pending[first:first + world]
        if rank < len(round_starts):
            lo = round_starts[rank]
            _embed_chunk(store, encoder, windows, lo, min(lo + chunk_size, total), table, mode,
                         batch_size, bar)
        distributed.barrier()
        if record is not None:
            record(round_starts)
            others = [lo for i, lo in enumerate(round_starts) if i != rank]
            bar.update(sum(min(lo + chunk_size, total) - lo for lo in others))
    bar.close()
