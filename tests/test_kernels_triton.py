"""The speech path's Triton kernels against their PyTorch references.

Kernels run in Triton's CPU interpreter. Triton reads ``TRITON_INTERPRET`` when it is
imported, and other libraries of the suite (transformers, peft) import it first, so the
interpreted tests (the ``@in_interpreter`` classes) run in a fresh pytest process started
with ``TRITON_INTERPRET=1`` by :func:`test_interpreted_kernels_in_a_fresh_process`; a
process that was started with it runs them directly.

Inputs are fresh random tensors of awkward sizes (not multiples of the tiles), outputs are
poisoned before each run so that an element the kernel forgets to write shows up, and the
interpreted tiles are small so that every kernel walks several tiles.

Without a GPU, soundness for CUDA is checked by compiling the kernels ahead of time for
sm_90 (H100/H200) with the ptxas that ships with Triton, within the shared memory limit.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton", reason="Triton is not installed (it ships for Linux only)")

from speechgpt_agent.kernels._triton_utils import interpreter_ready
from speechgpt_agent.kernels.quantize import quantize, quantize_reference, quantize_triton
from speechgpt_agent.kernels.unit_embedding import (
    unit_embedding,
    unit_embedding_reference,
    unit_embedding_triton,
)
from speechgpt_agent.kernels.vocoder import (
    lrelu_conv1d,
    lrelu_conv1d_reference,
    lrelu_conv1d_triton,
    resblock,
    resblock_reference,
)

# the modules, not the same-named functions that speechgpt_agent.kernels re-exports
quantize_module = importlib.import_module("speechgpt_agent.kernels.quantize")
unit_embedding_module = importlib.import_module("speechgpt_agent.kernels.unit_embedding")
vocoder_module = importlib.import_module("speechgpt_agent.kernels.vocoder")

TOL = {  # (rtol, atol) of the output dtype
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 2e-2),
}


INTERPRETER = interpreter_ready()  # this process imported Triton under TRITON_INTERPRET=1
in_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="runs in a fresh TRITON_INTERPRET=1 process (test_interpreted_kernels_in_a_fresh_process)"
)
compiled_triton = pytest.mark.skipif(INTERPRETER, reason="Triton was imported in interpreter mode")


@pytest.fixture(autouse=True)
def default_backend(monkeypatch):
    monkeypatch.delenv("SPEECHGPT_KERNELS", raising=False)


@compiled_triton
def test_interpreted_kernels_in_a_fresh_process(run_interpreted):
    run_interpreted(__file__)


@compiled_triton
def test_late_interpreter_request_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: Triton is imported
    monkeypatch.setenv("SPEECHGPT_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="before `import triton`"):
        quantize(torch.randn(4, 3), torch.randn(5, 3))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- quantize


def _sq_dist(x: torch.Tensor, c: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return ((x.double() - c.double()[ids]) ** 2).sum(1)


@in_interpreter
@pytest.mark.parametrize(
    "T,K,D,dtype",
    [
        (37, 1000, 8, torch.float32),  # the real K, 16 centroid tiles, T not a tile multiple
        (45, 130, 40, torch.bfloat16),  # D spans three feature tiles, the last one partial
        (19, 70, 24, torch.float16),
        (1, 1, 3, torch.float32),
    ],
)
def test_quantize_matches_reference(T, K, D, dtype):
    g = _gen(T * K + D)
    x = torch.randn(T, D, generator=g).to(dtype)
    c = torch.randn(K, D, generator=g)
    out = torch.full((T,), -7, dtype=torch.long)  # poison
    ids = quantize_triton(x, c, out=out)
    ref = quantize_reference(x, c)
    assert ids is out and ids.dtype == torch.long
    assert bool(((ids >= 0) & (ids < K)).all())
    # fp32 rounding may pick an equally near centroid: the distances must agree
    torch.testing.assert_close(_sq_dist(x, c, ids), _sq_dist(x, c, ref), rtol=1e-5, atol=1e-5)
    assert (ids == ref).float().mean() >= 0.9


@in_interpreter
@settings(max_examples=10, deadline=None)
@given(T=st.integers(1, 40), K=st.integers(1, 140), D=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_quantize_random_shapes(T, K, D, seed):
    g = _gen(seed)
    x, c = torch.randn(T, D, generator=g), torch.randn(K, D, generator=g)
    ids = quantize_triton(x, c, out=torch.full((T,), -1, dtype=torch.long))
    torch.testing.assert_close(_sq_dist(x, c, ids), _sq_dist(x, c, quantize_reference(x, c)), rtol=1e-5, atol=1e-5)


@in_interpreter
def test_quantize_ties_go_to_the_lowest_index():
    # Small integers make every distance exact, and with 5^3 = 125 distinct centroids among
    # 1000, every frame has several equally near ones, in the same and in other tiles.
    g = _gen(7)
    c = torch.randint(-2, 3, (1000, 3), generator=g).float()
    x = torch.randint(-2, 3, (61, 3), generator=g).float()
    exact = ((x.double()[:, None, :] - c.double()[None]) ** 2).sum(-1)
    expected = exact.argmin(1)  # first index on ties
    n_ties = (exact == exact.min(1, keepdim=True).values).sum(1)
    assert int(n_ties.min()) > 1  # the test does test ties
    assert torch.equal(quantize_triton(x, c), expected)
    assert torch.equal(quantize_reference(x, c), expected)


@in_interpreter
def test_quantize_strided_features_and_given_norms():
    g = _gen(3)
    wide = torch.randn(50, 2 * 20, generator=g)
    x = wide[::2, 1::2]  # non-contiguous rows and columns
    c = torch.randn(90, 20, generator=g)
    c_sq = (c * c).sum(1)
    assert torch.equal(quantize_triton(x, c, c_sq), quantize_triton(x.contiguous(), c))
    torch.testing.assert_close(
        _sq_dist(x, c, quantize_triton(x, c, c_sq)), _sq_dist(x, c, quantize_reference(x, c)), rtol=1e-5, atol=1e-5
    )


def test_quantize_triton_edge_cases_and_errors():
    c = torch.randn(4, 3)
    assert quantize_triton(torch.empty(0, 3), c).shape == (0,)
    with pytest.raises(ValueError, match="features"):
        quantize_triton(torch.zeros(3, 4), c)
    with pytest.raises(ValueError, match="empty"):
        quantize_triton(torch.zeros(3, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="centroid_sq_norms"):
        quantize_triton(torch.zeros(3, 3), c, torch.zeros(5))
    with pytest.raises(ValueError, match="out"):
        quantize_triton(torch.zeros(3, 3), c, out=torch.zeros(3, dtype=torch.int32))


# ---------------------------------------------------------------- unit embedding


@in_interpreter
@pytest.mark.parametrize(
    "B,N,V,C,dtype",
    [
        (3, 7, 50, 9, torch.float32),  # rows of different totals: zero tails
        (2, 13, 1000, 5, torch.bfloat16),
        (1, 1, 3, 2, torch.float16),
    ],
)
def test_unit_embedding_matches_reference(B, N, V, C, dtype):
    g = _gen(B * N * C)
    ids = torch.randint(0, V, (B, N), generator=g)
    durations = torch.randint(1, 21, (B, N), generator=g)
    durations[0, N // 2] = 0  # a skipped unit
    weight = torch.randn(V, C, generator=g).to(dtype)
    ref = unit_embedding_reference(ids, durations, weight)
    out = torch.full(ref.shape, float("nan"), dtype=dtype)  # poison
    got = unit_embedding_triton(ids, durations, weight, out=out)
    assert got is out
    assert torch.equal(got, ref)  # a pure copy: bit-exact


@in_interpreter
@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 12), C=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_unit_embedding_random_shapes(B, N, C, seed):
    g = _gen(seed)
    ids = torch.randint(0, 30, (B, N), generator=g)
    durations = torch.randint(0, 21, (B, N), generator=g)
    weight = torch.randn(30, C, generator=g)
    ref = unit_embedding_reference(ids, durations, weight)
    out = torch.full(ref.shape, float("nan"))
    assert torch.equal(unit_embedding_triton(ids, durations, weight, out=out), ref)


@in_interpreter
def test_unit_embedding_int32_strided_ids_and_empty_rows():
    g = _gen(11)
    ids = torch.randint(0, 20, (3, 12), generator=g, dtype=torch.int32)[:, ::2]  # strided int32
    durations = torch.randint(0, 4, (3, 6), generator=g)
    durations[1] = 0  # a row without frames
    weight = torch.randn(20, 6, generator=g)
    assert torch.equal(unit_embedding_triton(ids, durations, weight), unit_embedding_reference(ids, durations, weight))
    empty = unit_embedding_triton(ids[:, :0], durations[:, :0], weight)
    assert empty.shape == (3, 6, 0)


def test_unit_embedding_triton_validates_like_the_reference():
    weight = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        unit_embedding_triton(torch.tensor([[5]]), torch.tensor([[1]]), weight)
    with pytest.raises(ValueError, match="durations must be >= 0"):
        unit_embedding_triton(torch.tensor([[1]]), torch.tensor([[-1]]), weight)
    with pytest.raises(ValueError, match="out"):
        unit_embedding_triton(torch.tensor([[1]]), torch.tensor([[2]]), weight, out=torch.empty(1, 3, 3))


# ---------------------------------------------------------------- vocoder conv


def _conv_inputs(B, C_in, C_out, T, k, dtype, seed, context=0):
    g = _gen(seed)
    x = torch.randn(B, C_in, T, generator=g).to(dtype)
    weight = (torch.randn(C_out, C_in, k, generator=g) / math.sqrt(C_in * k)).to(dtype)
    bias = torch.randn(C_out, generator=g).to(dtype)
    left = torch.randn(B, C_in, context, generator=g).to(dtype) if context else None
    return x, weight, bias, left


@in_interpreter
@pytest.mark.parametrize(
    "B,C_in,C_out,T,k,dilation,padding,context,with_residual,dtype",
    [
        (2, 20, 21, 23, 3, 1, 1, 0, True, torch.float32),  # 'same' conv of a residual block, c2
        (1, 17, 5, 30, 7, 3, 9, 0, False, torch.float32),  # dilated 'same' conv, c1
        (2, 6, 18, 9, 11, 5, 0, 45, True, torch.bfloat16),  # streaming: left context, no padding
        (1, 19, 7, 25, 3, 5, 0, 4, False, torch.float16),
    ],
)
def test_lrelu_conv1d_matches_reference(B, C_in, C_out, T, k, dilation, padding, context, with_residual, dtype):
    x, weight, bias, left = _conv_inputs(B, C_in, C_out, T, k, dtype, seed=C_in * T + k, context=context)
    t_out = 2 * padding + context + T - (k - 1) * dilation
    residual = torch.randn(B, C_out, t_out, generator=_gen(1)).to(dtype) if with_residual else None
    kwargs = {"padding": padding, "residual": residual, "left_context": left}
    ref = lrelu_conv1d_reference(x, weight, bias, dilation, **kwargs)
    out = torch.full(ref.shape, float("nan"), dtype=dtype)  # poison
    got = lrelu_conv1d_triton(x, weight, bias, dilation, out=out, **kwargs)
    assert got is out and got.shape == (B, C_out, t_out)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


@in_interpreter
@settings(max_examples=10, deadline=None)
@given(
    B=st.integers(1, 2), C_in=st.integers(1, 20), C_out=st.integers(1, 20), k=st.sampled_from([1, 3, 5]),
    dilation=st.integers(1, 3), T=st.integers(1, 30), context=st.integers(0, 6), residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lrelu_conv1d_random_shapes(B, C_in, C_out, k, dilation, T, context, residual, seed):
    reach = (k - 1) * dilation
    padding = reach // 2
    if 2 * padding + context + T <= reach:
        padding = reach  # keep the output non-empty
    x, weight, bias, left = _conv_inputs(B, C_in, C_out, T, k, torch.float32, seed=seed, context=context)
    t_out = 2 * padding + context + T - reach
    res = torch.randn(B, C_out, t_out, generator=_gen(seed + 1)) if residual else None
    kwargs = {"padding": padding, "residual": res, "left_context": left}
    ref = lrelu_conv1d_reference(x, weight, bias, dilation, **kwargs)
    out = torch.full(ref.shape, float("nan"))
    got = lrelu_conv1d_triton(x, weight, bias, dilation, out=out, **kwargs)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@in_interpreter
def test_lrelu_conv1d_strided_input_no_bias():
    x, weight, _, _ = _conv_inputs(2, 18, 18, 40, 3, torch.float32, seed=5)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # time-major storage
    assert not xt.is_contiguous()
    got = lrelu_conv1d_triton(xt, weight, None, 3, padding=3, slope=0.2)
    torch.testing.assert_close(got, lrelu_conv1d_reference(x, weight, None, 3, padding=3, slope=0.2))


@in_interpreter
def test_lrelu_conv1d_streaming_with_left_context_equals_offline():
    """A stream that carries the last (k - 1) * d inputs as left context reproduces the
    whole-signal convolution, chunk by chunk."""
    k, d = 3, 5
    reach = (k - 1) * d
    x, weight, bias, _ = _conv_inputs(1, 16, 16, 47, k, torch.float32, seed=9)
    offline = lrelu_conv1d_reference(x, weight, bias, d)
    pieces, cache = [], x[:, :, :reach]
    for start in range(reach, x.shape[2], 13):
        chunk = x[:, :, start : start + 13]
        pieces.append(lrelu_conv1d_triton(chunk, weight, bias, d, left_context=cache))
        cache = torch.cat([cache, chunk], dim=2)[:, :, -reach:]
    torch.testing.assert_close(torch.cat(pieces, dim=2), offline)


def test_lrelu_conv1d_rejects_bad_inputs():
    x, weight, bias, _ = _conv_inputs(1, 4, 4, 5, 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="kernel's reach"):
        lrelu_conv1d_triton(x, weight, bias, 5)
    with pytest.raises(ValueError, match="residual"):
        lrelu_conv1d_triton(x, weight, bias, 1, residual=torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="weight"):
        lrelu_conv1d_triton(x, weight[:, :3], bias, 1)
    with pytest.raises(ValueError, match="left_context"):
        lrelu_conv1d_triton(x, weight, bias, 1, left_context=torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="dilation"):
        lrelu_conv1d_triton(x, weight, bias, 0)


@in_interpreter
def test_resblock_fused_equals_upstream_block(monkeypatch):
    from speechgpt_agent.vocoder import ResBlock

    torch.manual_seed(0)
    block = ResBlock(6, 3, (1, 3, 5)).eval()  # the model's own residual block
    x = torch.randn(2, 6, 29)
    with torch.no_grad():
        expected = block(x)
        torch.testing.assert_close(resblock_reference(x, block.convs1, block.convs2), expected)
        monkeypatch.setenv("SPEECHGPT_KERNELS", "triton")
        torch.testing.assert_close(resblock(x, block.convs1, block.convs2), expected, rtol=1e-5, atol=1e-5)


def test_resblock_rejects_unpaired_or_unpadded_convs():
    conv = nn.Conv1d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="pair"):
        resblock_reference(torch.zeros(1, 4, 8), [conv], [])
    with pytest.raises(ValueError, match="same"):
        resblock(torch.zeros(1, 4, 8), [nn.Conv1d(4, 4, 3)], [conv])


# ---------------------------------------------------------------- dispatch


def _fail(*args, **kwargs):
    raise AssertionError("the dispatcher took the wrong backend")


def _small_calls():
    g = _gen(2)
    ids, durations, weight = torch.randint(0, 5, (2, 3), generator=g), torch.full((2, 3), 2), torch.randn(5, 4)
    x, w, b, _ = _conv_inputs(1, 4, 4, 6, 3, torch.float32, seed=2)
    return [
        (quantize_module, "quantize", lambda: quantize(torch.randn(5, 3, generator=g), torch.randn(4, 3))),
        (unit_embedding_module, "unit_embedding", lambda: unit_embedding(ids, durations, weight)),
        (vocoder_module, "lrelu_conv1d", lambda: lrelu_conv1d(x, w, b, 1, padding=1)),
    ]


@pytest.mark.parametrize(
    "setting,avoid",
    [pytest.param("triton", "reference", marks=in_interpreter), ("torch", "triton"), ("auto", "triton")],
)
def test_dispatch_follows_setting(monkeypatch, setting, avoid):
    monkeypatch.setenv("SPEECHGPT_KERNELS", setting)  # auto: CPU tensors take the reference
    for module, name, call in _small_calls():
        with monkeypatch.context() as patch:
            patch.setattr(module, f"{name}_{avoid}", _fail)
            call()


def test_dispatch_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("SPEECHGPT_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for _, _, call in _small_calls():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            call()


# ---------------------------------------------------------------- ahead-of-time compile for CUDA

SHARED_MEMORY_SM90 = 227 * 1024  # bytes per block on H100/H200


def _compile_sm90(kernel, config, ptr_dtype, constexprs):
    """Compile ``kernel`` with ``config`` for sm_90 without a GPU; return its metadata."""
    import triton
    from triton.backends.compiler import GPUTarget

    jitted = triton.jit(kernel.fn)
    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    constants = {**constexprs, **meta}
    signature = {}
    for name in jitted.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + ptr_dtype.get(name, ptr_dtype["*"])
        else:
            signature[name] = "fp32" if name == "slope" else "i32"
    source = triton.compiler.ASTSource(fn=jitted, signature=signature, constexprs=constants)
    options = {"num_warps": config.get("num_warps", 4), "num_stages": config.get("num_stages", 2)}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).metadata


def _aot_cases():
    import triton.language as tl

    conv = {
        "HAS_CTX": True, "HAS_BIAS": True, "HAS_RES": True, "UPCAST_DOT": False,
    }
    return {
        "quantize": (quantize_module._nearest_centroid_kernel, {"*": "bf16", "c_ptr": "fp32",
                     "c_sq_ptr": "fp32", "out_ptr": "i64"}, {}),
        "unit_embedding": (unit_embedding_module._unit_embedding_kernel, {"*": "bf16", "ids_ptr": "i64",
                           "ends_ptr": "i32"}, {}),
        "conv_fp32_tf32": (vocoder_module._lrelu_conv1d_kernel, {"*": "fp32"},
                           {**conv, "DOT_DTYPE": tl.float32, "INPUT_PRECISION": "tf32"}),
        "conv_bf16": (vocoder_module._lrelu_conv1d_kernel, {"*": "bf16"},
                      {**conv, "DOT_DTYPE": tl.bfloat16, "INPUT_PRECISION": "ieee"}),
    }


def _skip_without_nvidia_backend():
    try:
        from triton.backends import backends
    except ImportError:
        pytest.skip("this Triton has no backend registry")
    if "nvidia" not in backends:
        pytest.skip("this Triton build has no NVIDIA backend to compile with")


@compiled_triton
@pytest.mark.parametrize("case", ["quantize", "unit_embedding", "conv_fp32_tf32", "conv_bf16"])
def test_every_autotune_config_compiles_for_sm90(case, monkeypatch, tmp_path):
    """Every configuration the autotuner may pick compiles for sm_90 and fits its shared memory."""
    _skip_without_nvidia_backend()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated
    kernel, ptr_dtype, constexprs = _aot_cases()[case]
    for config in kernel.configs:
        assert _compile_sm90(kernel, config, ptr_dtype, constexprs).shared <= SHARED_MEMORY_SM90, config
