"""A model and one multi-sequence llama.cpp context, through llama-cpp-python's low-level API.

``LlamaBatchContext`` is used only from the model's decode thread. Its KV memory holds one
stream per slot (``kv_unified`` off), so every sequence has the full per-request context, as
Ollama gives each of its parallel slots ``num_ctx`` tokens. A unified cache (llama-server's
default: one pool the slots share, so a slot costs memory only while used) does not keep batch
invariance: where a sequence's cells lie in the pool depends on the others, and so does the
order its attention sums them in; on the test model, from seven sequences decoding together
on, some rows' logits were no longer bit for bit their lone ones. So each slot keeps a stream
of its own, and the default number of slots comes from the memory budget instead
(``scheduling.parallel_for_memory``).

Batch invariance: every decode row takes the same CPU kernels whether it runs alone or beside
up to ``parallel - 1`` others, so a sequence gets exactly its lone logits at any concurrency
(greedy and seeded output is the same alone or in a batch; see the runtime tests, which run
eight sequences together). Two of llama.cpp's CPU paths pick their kernel by the number of
rows in a batch and are turned off while ``ContextConfig.batch_invariant`` holds (the default):

* weight repacking (its "extra buffer types"): a row's matrix
  products take four-row tiles or a one-row tail depending on how many rows share the batch,
  so on the test model a sequence decoding beside three others already got other logits;
* the tiled K-quant matrix product (``ggml-cpu/tiled``, ``GGML_CPU_TILED_MM``), which takes
  over from the per-row dot products once a product has eight or more rows
  (``ggml_tiled_min_batch``) and rounds some rows differently: on the test model (its K-quant
  layers) half of eight sequences decoding together got logits up to 0.85 away from their
  lone ones, and their greedy text drifted. llama.cpp reads the switch from the environment
  once, at its first matrix product, so ``select_cpu_kernels`` sets it before a context is
  made; the first model a process loads decides it for the process (an explicit
  ``GGML_CPU_TILED_MM`` in the environment wins).

With both off, the kernels that remain (ggml's per-row dot products, and llamafile's tinyBLAS
for the Q8_0/Q5_0 matrices from two rows on) gave every one of 1 to 16 sequences decoding
together bit for bit its lone logits on the test model, with and without flash attention, as
long as no decoding row is its computation's only sequence once that holds 256 tokens or more:
llama.cpp's CPU flash attention then splits the row's KV cells over the threads and sums the
parts in another order than beside other sequences (a sequence decoding alone got logits up to
5 away from its own beside three others, at 260 and 400 cached tokens). So where flash
attention runs on the CPU, such a row is decoded beside a throwaway row of a neighbouring slot
(``pairs_lone_rows``, ``scheduling.lone_partners``; a model whose memory cannot be cut,
recurrent state, keeps no invariance with flash attention). On the test model's two cores that
made a 16-row step 13% shorter (45 ms against 51) and a lone sequence's step at 300 to 1000
held tokens 10-15% longer (13.0 ms against 11.3, 13.2 against 12.0; even at 1900). Flash
attention is on unless turned off (``flash_attention_for``: llama.cpp's own choice, which runs
it on the CPU, as llama-server does): a server is for many streams.
``batch_invariant=False`` turns both back on: faster for some quantizations and CPUs (on the
test model, Q4_K_M, no faster on 2 or 16 cores), and a sequence's logits then depend on what
decodes beside it.

The guarantee is the CPU backend's. llama.cpp's CUDA kernels also change with the number of
rows (on an H200, a row's logits were bit for bit its lone ones beside up to three others, and
differed from five rows on, by enough to change a greedy token from nine on), so a model
offloaded to a GPU is repeatable alone but not invariant in a batch, with either setting.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral_runtime.engine.bindings import complete_in_background, import_bindings
from corral_runtime.engine.prefetch import FilePrefetch
from corral_runtime.engine.types import EngineError, InvalidRequestError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
# llama-cpp-python routes llama.cpp's log through this logger; errors only.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def select_cpu_kernels(batch_invariant: bool) -> None:
    """Choose llama.cpp's tiled K-quant matrix product for this process (see the module
    docstring): off for batch invariance. It takes effect only before the process's first
    matrix product, and an explicit ``GGML_CPU_TILED_MM`` in the environment wins."""
    # llama.cpp reads this switch from the process's environment and offers no API for it, so
    # the setting can only travel there; setdefault keeps an operator's explicit value (a
    # settings field would have to mirror llama.cpp's own variable to do the same).
    os.environ.setdefault("GGML_CPU_TILED_MM", "0" if batch_invariant else "1")


def flash_attention_for(kv_cache_type: str, flash_attention: bool | None) -> bool | None:
    """Whether a context gets flash attention: when asked, and always with a quantized KV
    cache, since llama.cpp cannot make a context with a quantized V cache without it (Ollama
    instead falls back to an f16 cache with a warning; here the cache a user set is the cache
    they get). Unset, None: llama.cpp decides as it makes the context, on wherever the devices
    holding the layers run it, the CPU included (llama-server's default too). On the CPU, with
    batch invariance, that shortens the steps of many rows and lengthens a lone sequence's
    from position 240 on (see the module docstring)."""
    if kv_cache_type != "f16":
        return True
    return flash_attention


def flash_attention_name(flash_attention: bool | None) -> str:
    """``flash_attention_for``'s answer as logged: on, off, or auto (llama.cpp's choice)."""
    return "auto" if flash_attention is None else "on" if flash_attention else "off"


def utf8(text: str) -> bytes:
    """Text as llama.cpp's tokenizer takes it; text UTF-8 cannot encode (a lone surrogate) is
    the request's fault, not the engine's."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError("the input is not valid Unicode text") from exc


@dataclass(frozen=True, slots=True)
class ContextConfig:
    model_path: Path
    n_ctx: int  # per sequence
    parallel: int
    n_batch: int
    n_gpu_layers: int = 0
    n_threads: int | None = None
    flash_attn: bool | None = None  # None: see ``flash_attention_for``
    # The KV cache's element type: "f16", "q8_0" or "q4_0" (see ``flash_attention_for``).
    kv_cache_type: str = "f16"
    # Each sequence's logits the same whatever decodes beside it (see the module docstring).
    batch_invariant: bool = True
    # The layers' proportions per GPU (llama.cpp's tensor_split); empty: llama.cpp's own split.
    tensor_split: tuple[float, ...] = ()
    # The load's switch to stop (``LoadAbort``); None: it cannot be stopped.
    abort: LoadAbort | None = None


def first_positions(rows: list[Row]) -> dict[int, int]:
    """Each sequence's first position among ``rows``: where its KV memory is cut back to
    after a stopped decode."""
    first: dict[int, int] = {}
    for row in rows:
        first[row.seq_id] = min(row.pos, first.get(row.seq_id, row.pos))
    return first


def tensor_split_of(text: str) -> tuple[float, ...]:
    """Proportions per GPU from ``CORRAL_TENSOR_SPLIT`` ("1,1"); empty for none."""
    return tuple(float(part) for part in text.split(",")) if text.strip() else ()


class LoadAbort:
    """A load's switch to stop: set from any thread (a signal handler included: it only
    writes an attribute), llama.cpp sees it at its next progress step (between tensors), stops
    reading the model and frees what it took. With the file mapped (the CPU's default), llama.cpp
    reads it whole before its first step, so a set switch stops what follows the read: the
    offload of each tensor to a GPU and the context's creation."""

    __slots__ = ("began", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None  # None: the load goes on
        # Set as llama.cpp's load is called: from then on the load runs without the GIL.
        self.began = False

    def abort(self, reason: str) -> None:
        """Stop the load, for ``reason`` (the first one given stays)."""
        if self.reason is None:
            self.reason = reason


class DecodeInterrupt:
    """A switch that stops the ``llama_decode`` in flight (``LlamaBatchContext.interruptible``)
    once it is both armed (the decode thread's say: this decode may be stopped) and requested
    (set from any thread: something more urgent has arrived).

    llama.cpp asks its abort callback after every node of a decode's graph, hundreds of times a
    decode, and a Python callback takes the GIL each time: beside a busy event loop that made
    decoding several times slower. So the answer is a C string in memory, empty or one byte
    long, and the callback is libc's ``strlen``, which reads it without Python; a length of one
    is the ``true`` that stops the decode. The string is rewritten under a lock whenever either
    half changes, so it is never left stopping a decode that is not armed."""

    __slots__ = ("_armed", "_lock", "_requested", "flag")

    def __init__(self) -> None:
        self._armed = False
        self._requested = False
        self._lock = threading.Lock()
        self.flag = ctypes.create_string_buffer(2)  # b"" or b"\x01"

    def arm(self, armed: bool) -> None:
        """Whether the decode about to run (or just done, False) may be stopped."""
        with self._lock:
            self._armed = armed
            self._write()

    def request(self, requested: bool = True) -> None:
        """Ask the armed decode to stop (False: forget an earlier request)."""
        with self._lock:
            self._requested = requested
            self._write()

    def _write(self) -> None:
        self.flag[0] = b"\x01" if self._armed and self._requested else b"\x00"


@dataclass(slots=True)
class Row:
    """One token of a batch: which sequence, at which position, and whether to keep logits."""

    token: int
    pos: int
    seq_id: int
    logits: bool


class LlamaBatchContext:
    """A loaded model, its vocabulary and a context with ``parallel`` sequences."""

    def __init__(self, config: ContextConfig) -> None:
        # The file's read begins first, beside the bindings' import and llama.cpp's parse of
        # the file (engine.prefetch); it stops with the load, however that ends.
        switch = config.abort
        prefetch = FilePrefetch(config.model_path, lambda: switch is None or switch.reason is None)
        prefetch.start()
        try:
            self._load_model(config)
        finally:
            prefetch.stop()
        self._create_context(config)

    def _load_model(self, config: ContextConfig) -> None:
        """llama.cpp's model (``self.model``), its weights read, or ``EngineError``."""
        # Here, not at the top: importing the server must not wait for llama.cpp's bindings.
        # Only they come before the load; numpy and the rest of llama-cpp-python (first needed
        # at the first logits, ``_np``) are imported in a thread while llama.cpp loads the
        # model without the GIL (see engine.bindings).
        import_bindings()
        complete_in_background()
        import llama_cpp

        self._llama = llama_cpp
        select_cpu_kernels(config.batch_invariant)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = config.n_gpu_layers
        if config.tensor_split:
            devices = int(llama_cpp.llama_max_devices())
            if len(config.tensor_split) > devices:
                raise EngineError(f"a tensor split over more than {devices} GPUs")
            # Kept on self: llama.cpp reads the array while it loads the model.
            self._tensor_split = (ctypes.c_float * devices)(*config.tensor_split)
            model_params.tensor_split = self._tensor_split
        # Weight repacking: row-count-dependent kernels (see the module docstring).
        model_params.use_extra_bufts = not config.batch_invariant
        # llama.cpp's default load: the file mapped with MAP_POPULATE, which read a cold 2.5 GB
        # GGUF at the volume's own sequential rate or faster (bench/load.py); reading it in
        # (LLAMA_LOAD_MODE_NONE), direct I/O, POSIX_FADV_WILLNEED first, or a Python reader
        # ahead of the mapping were each slower (0.3 to 0.7 of it), so the mode stays. But
        # llama.cpp parses the metadata and builds the vocabulary before it maps the file, so
        # a thread populates a mapping of its own meanwhile (engine.prefetch).
        switch = config.abort
        if switch is not None:
            # Kept in this frame while llama.cpp may call it (ctypes frees a callback nothing
            # references); llama.cpp stops the load, and returns NULL, once it answers False.
            # It runs at every progress step (one per tensor), so it only reads an attribute.
            on_progress = llama_cpp.llama_progress_callback(
                lambda _progress, _data: switch.reason is None
            )
            model_params.progress_callback = on_progress
        started = time.perf_counter()
        if switch is not None:
            switch.began = True
        self.model = llama_cpp.llama_model_load_from_file(
            str(config.model_path).encode("utf-8"), model_params
        )
        # Set midway (NULL), or as the last tensor loaded (a model, which is freed).
        if switch is not None and switch.reason is not None:
            if self.model:
                llama_cpp.llama_model_free(self.model)
            raise EngineError(f"the load was abandoned: {switch.reason}")
        if not self.model:
            raise EngineError(
                "llama.cpp could not load the model file", detail=str(config.model_path)
            )
        # Apart from the context's creation (its KV cache), which load_duration also counts.
        self.weights_seconds = time.perf_counter() - started
        log.info("read the weights of %s in %.2fs", config.model_path.name, self.weights_seconds)

    def _create_context(self, config: ContextConfig) -> None:
        """The context over ``self.model`` (freeing the model if it cannot be made)."""
        llama_cpp = self._llama
        self.capacity = config.n_batch
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx * config.parallel
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_batch
        params.n_seq_max = config.parallel
        params.kv_unified = False
        params.swa_full = True  # any cached prefix stays reusable on sliding-window models
        flash = flash_attention_for(config.kv_cache_type, config.flash_attn)
        recurrent = bool(
            llama_cpp.llama_model_is_recurrent(self.model)
            or llama_cpp.llama_model_is_hybrid(self.model)
        )
        # llama.cpp's CPU flash attention splits a lone sequence's one row over the threads
        # once it holds some 256 tokens, and sums the parts in another order than beside other
        # sequences (see the module docstring): where that could happen and batch invariance
        # holds, the worker decodes such a row beside a throwaway row of a neighbouring slot
        # (a memory that cannot be cut, recurrent state, takes no throwaway rows).
        self.pairs_lone_rows = (
            flash is not False
            and config.n_gpu_layers == 0
            and config.batch_invariant
            and not recurrent
        )
        self.cuttable = not recurrent  # a sequence's memory can be cut at any position
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            if flash is None
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if flash
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.type_k = params.type_v = getattr(
            llama_cpp, f"GGML_TYPE_{config.kv_cache_type.upper()}"
        )
        if config.n_threads is not None:
            params.n_threads = config.n_threads
            params.n_threads_batch = config.n_threads
        # What this costs (bench/load.py's 2.5 GB, 219-layer model, one slot of 4096 tokens,
        # timed by llama.cpp's own log): the KV cache, 438 MiB that llama.cpp clears as soon as
        # it is allocated, 250-300 ms (430-510 on a loaded machine): the memory is fresh, so the
        # clear is each page's first touch, ~112k page faults (clearing it again takes 10 ms;
        # transparent huge pages, glibc.malloc.hugetlb=1, were slower still); then the graph
        # reservation, 70-105 ms (six graphs of 8547 nodes: three for llama.cpp's fused-op
        # checks, then prompt, decode, prompt); about 15 ms else. Neither can start before the
        # model exists, and its load returns with the file read: the read is what moves
        # earlier (engine.prefetch), not this.
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise EngineError(
                "llama.cpp could not create a context for the model (out of memory?)",
                detail=str(config.model_path),
            )
        # llama.cpp shrinks the batch to a small context and asserts on a larger one (taking
        # the process down): what it holds is the capacity, and ``decode`` refuses more.
        self.capacity = min(config.n_batch, int(llama_cpp.llama_n_batch(self.ctx)))
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos: int | None = (
            bos if bos >= 0 and llama_cpp.llama_vocab_get_add_bos(self.vocab) else None
        )
        self.bos_text = (
            self.piece(self.bos).decode("utf-8", "replace") if self.bos is not None else None
        )
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._llama.llama_batch_free(self._batch)
        self._llama.llama_free(self.ctx)
        self._llama.llama_model_free(self.model)

    # -- text --------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: special tokens parsed, BOS added unless already there."""
        data = utf8(text)
        size = len(data) + 8
        while True:
            buffer = (self._llama.llama_token * size)()
            n = self._llama.llama_tokenize(self.vocab, data, len(data), buffer, size, False, True)
            if n >= 0:
                break
            size = -n
        tokens = list(buffer[:n])
        if (
            self.bos is not None
            and self.bos_text is not None
            and not text.startswith(self.bos_text)
        ):
            tokens.insert(0, self.bos)
        return tokens

    @functools.cached_property
    def max_piece_bytes(self) -> int:
        """The longest token's bytes: a text of more than ``n * max_piece_bytes`` bytes (or
        characters) has more than ``n`` tokens, without tokenizing it."""
        return max(1, max((len(self.piece(t)) for t in range(self.n_vocab)), default=1))

    def piece(self, token: int) -> bytes:
        """The bytes of one token, special tokens included."""
        n = self._llama.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, True
        )
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = self._llama.llama_token_to_piece(
                self.vocab, token, self._piece, len(self._piece), 0, True
            )
        return self._piece.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._llama.llama_vocab_is_eog(self.vocab, token))

    # -- memory and decoding -----------------------------------------------------------------

    def copy_sequence(self, source: int, target: int) -> None:
        """Make ``target``'s KV memory a copy of ``source``'s (the caller then cuts it with
        ``keep_prefix``). Slots have KV streams of their own, so llama.cpp copies the whole
        stream, at the next decode; it copies only whole ranges across streams (a range would
        abort the process), hence both ends open."""
        self._llama.llama_memory_seq_cp(self.memory, source, target, -1, -1)

    def keep_prefix(self, seq_id: int, length: int) -> bool:
        """Drop a sequence's KV memory from position ``length`` on; False if it could not be
        cut there (the caller then starts that sequence from scratch)."""
        return bool(self._llama.llama_memory_seq_rm(self.memory, seq_id, length, -1))

    def clear(self, seq_id: int) -> None:
        self._llama.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def interruptible(self, switch: DecodeInterrupt) -> None:
        """Let ``switch`` stop a decode midway (``decode`` then returns False)."""
        strlen = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
        assert strlen is not None
        # Kept on self while llama.cpp may read them: the C function and the switch's string.
        self._on_abort = self._llama.ggml_abort_callback(strlen)
        self._abort_flag = switch.flag
        data = ctypes.cast(switch.flag, ctypes.c_void_p)
        self._llama.llama_set_abort_callback(self.ctx, self._on_abort, data)

    def decode(self, rows: list[Row]) -> bool:
        """Evaluate one batch; the rows marked ``logits`` can then be sampled by index. False
        when a ``DecodeInterrupt`` stopped it: the KV memory holds none of its rows (llama.cpp
        drops those of the part it stopped in; the parts done before are dropped here), so the
        same rows can be decoded again."""
        if len(rows) > self.capacity:
            raise EngineError(f"batch of {len(rows)} tokens exceeds its capacity {self.capacity}")
        batch = self._batch
        for i, row in enumerate(rows):
            batch.token[i] = row.token
            batch.pos[i] = row.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = row.seq_id
            batch.logits[i] = row.logits
        batch.n_tokens = len(rows)
        status = int(self._llama.llama_decode(self.ctx, batch))
        if status == 2:  # aborted
            for seq_id, pos in first_positions(rows).items():
                if not self.keep_prefix(seq_id, pos):
                    raise EngineError("a stopped llama_decode's rows could not be dropped")
            return False
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status}")
        return True

    @functools.cached_property
    def _np(self) -> Any:
        """numpy, imported at the first logits read, after the load (see ``__init__``)."""
        import numpy

        return numpy

    def logits(self, index: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The logits of batch row ``index``, as a view valid until the next decode."""
        logits = self._llama.llama_get_logits_ith(self.ctx, index)
        view: np.ndarray[Any, np.dtype[np.float32]]
        view = self._np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        return view

    def argmax(self, index: int) -> int:
        """The most likely token at batch row ``index`` (the first of equal maxima, as
        llama.cpp's greedy sampler picks it)."""
        return int(self._np.argmax(self.logits(index)))

    def argmax_rows(self, n: int) -> list[int]:
        """The most likely token of each of the batch's first ``n`` rows, all of which kept
        their logits (as ``argmax``, the first of equal maxima): one numpy call over a view of
        every row, where a view and a call per row cost more than the arg-max itself."""
        logits = self._llama.llama_get_logits(self.ctx)  # rows in batch order
        view = self._np.ctypeslib.as_array(logits, shape=(n, self.n_vocab))
        return [int(token) for token in self._np.argmax(view, axis=1)]

    def sample(self, sampler: Any, index: int) -> int:
        """Sample (and accept) a token from the logits of batch row ``index``."""
        return int(self._llama.llama_sampler_sample(sampler, self.ctx, index))

    # -- samplers ----------------------------------------------------------------------------

    def grammar_sampler(self, gbnf: str) -> Any:
        sampler = self._llama.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise InvalidRequestError("the output format's grammar could not be parsed")
        return sampler
