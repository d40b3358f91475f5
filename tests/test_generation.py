"""Inference caches, recurrent decoding and generation, for every layout preset and every registered layer.

Tolerances (float32 on the CPU): step-by-step, chunked and parallel forwards compute the same sums in a
different order (attention over a growing key range, a conv over a window, the same sequential scan),
so logits (about 0.5 in size) agree to float32 rounding: atol 1e-5, rtol 1e-4. GPU tests in bf16
follow STYLE 4: the decoding path's error against a float32 reference must stay within twice the
parallel path's error in the same dtype, plus BF16_ATOL.
"""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from hybrid.errors import ConfigError
from hybrid.generation import (generate, make_static, prefill, sample_next, snapshot, state_kinds, state_nbytes,
                               state_tensors)
from hybrid.model import HybridLM
from hybrid.model_config import ModelConfig
from hybrid.registry import LAYERS, register_layer

ATOL, RTOL = 1e-5, 1e-4
BF16_ATOL = 1e-2
ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "configs" / "layouts").glob("*.yaml"))
# preset -> extra overrides: a window shorter than the test sequences, so that the ring buffer wraps
EXTRA = {"samba": ["model.layers.W.window=5"]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and do not fight parallel test runs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(preset: str, *overrides: str, d_model: int = 32) -> HybridLM:
    """A tiny model of a layout preset; skipped when the preset names a layer argument not built yet."""
    pytest.importorskip("omegaconf", reason="configs are read with omegaconf")
    from hybrid.config import load_config  # noqa: PLC0415

    try:
        root = load_config(ROOT / "configs" / "layouts" / f"{preset}.yaml",
                           [f"model.d_model={d_model}", *EXTRA.get(preset, []), *overrides])
    except ConfigError as err:
        if "unknown layer" in str(err):
            pytest.skip(f"preset {preset!r} does not build yet: {err}")
        raise
    torch.manual_seed(0)
    return HybridLM(root.model).eval()


def tokens(batch: int, length: int, seed: int = 1) -> Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------------------------
# Caches: step, prefill + decode, chunked prefill == one parallel forward


@torch.no_grad()
@pytest.mark.parametrize("preset", PRESETS)
def test_step_by_step_decoding_matches_parallel_forward(preset):
    model = build(preset)
    ids = tokens(2, 13)
    full = model(ids)
    state = model.init_state(2, 13)
    steps = torch.cat([model(ids[:, t:t + 1], state) for t in range(13)], dim=1)
    close(steps, full)


@torch.no_grad()
@pytest.mark.parametrize("preset", PRESETS)
def test_prefill_then_decode_matches_parallel_forward(preset):
    model = build(preset)
    ids = tokens(2, 14)
    full = model(ids)
    state = model.init_state(2, 14)
    close(prefill(model, ids[:, :9], state), full[:, 8])
    for t in range(9, 14):
        close(model(ids[:, t:t + 1], state)[:, 0], full[:, t])


@torch.no_grad()
@pytest.mark.parametrize("preset", PRESETS)
def test_fixed_shape_decoding_matches_parallel_forward(preset):
    """The steps a CUDA graph replays (KV caches with a device position, masked full-cache attention),
    run eagerly: after a prefill they continue the parallel forward, past a sliding window's size too."""
    model = build(preset)
    ids = tokens(2, 21)
    full = model(ids)
    state = model.init_state(2, 21)
    close(prefill(model, ids[:, :6], state), full[:, 5])
    make_static(model, state)
    for t in range(6, 21):
        close(model(ids[:, t:t + 1], state)[:, 0], full[:, t])


@torch.no_grad()
@pytest.mark.parametrize("preset", ["transformer", "samba", "jamba"])
def test_snapshot_undoes_the_warm_up_steps(preset):
    """What a CUDA graph's capture does before recording: snapshot, two steps, restore. The state must
    come back bit for bit (the ring of samba's window 5 wraps during the steps), and a fixed-shape KV
    cache must save only the two slots the steps write."""
    model = build(preset)
    state = model.init_state(2, 12)
    prefill(model, tokens(2, 9), state)
    make_static(model, state)
    before = [t.clone() for t in state_tensors(state)]
    restore = snapshot(state, 2)
    for t in range(2):
        model(tokens(2, 1, seed=t + 5), state)
    assert any(not torch.equal(a, b) for a, b in zip(before, state_tensors(state)))
    restore()
    for a, b in zip(before, state_tensors(state)):
        assert torch.equal(a, b)
    # only the written slots are saved: a change to another slot outlives the restore
    cache = next(c for s in state for c in (s if isinstance(s, list) else [s]) if hasattr(c, "snapshot_steps"))
    restore = snapshot(state, 2)
    written = {int(p) % cache.k.shape[1] for p in (cache.position, cache.position + 1)}
    other = next(i for i in range(cache.k.shape[1]) if i not in written)
    cache.k[:, other] = 7.0
    model(tokens(2, 1, seed=9), state)
    restore()
    assert torch.all(cache.k[:, other] == 7.0)
    assert all(torch.equal(a, b) for a, b in zip(before, state_tensors(state)) if a.shape != cache.k.shape)


@torch.no_grad()
def test_fixed_shape_cache_refuses_a_second_prefill():
    model = build("transformer")
    state = model.init_state(1, 8)
    prefill(model, tokens(1, 3), state)
    make_static(model, state)
    with pytest.raises(RuntimeError, match="fixed shapes"):
        prefill(model, tokens(1, 2), state)


@torch.no_grad()
@pytest.mark.parametrize("preset", PRESETS)
def test_chunked_prefill_matches_one_prefill(preset):
    model = build(preset)
    ids = tokens(2, 15)
    one, chunked = model.init_state(2, 16), model.init_state(2, 16)
    close(prefill(model, ids[:, :14], chunked, chunk_size=4), prefill(model, ids[:, :14], one))
    close(model(ids[:, 14:], chunked), model(ids[:, 14:], one))  # the states agree too


@torch.no_grad()
def test_mamba_state_size_does_not_depend_on_context_length():
    model = build("mamba")
    sizes = {n: state_nbytes(model.init_state(2, n)) for n in (16, 1024, 65536)}
    assert len(set(sizes.values())) == 1, sizes
    state = model.init_state(2, 64)
    prefill(model, tokens(2, 50), state)
    assert state_nbytes(state) == sizes[16]
    # 8 layers x (conv (2, 64, 3) fp32 + ssm (2, 64, 16) fp32)
    assert sizes[16] == 8 * (2 * 64 * 3 + 2 * 64 * 16) * 4
    transformer = build("transformer")
    assert state_nbytes(transformer.init_state(2, 1024)) == 64 * state_nbytes(transformer.init_state(2, 16))


def test_state_kinds_cover_parallel_and_shared_blocks():
    assert state_kinds(build("falcon-h1"))[0] == ["recurrent", "kv"]
    zamba = build("zamba")
    kinds = state_kinds(zamba)
    assert kinds[6] == ["kv"] and kinds[7] == ["none"]
    state = zamba.init_state(1, 8)
    assert zamba.blocks[6] is zamba.blocks[14] and state[6] is not state[14]  # one state per use


# ---------------------------------------------------------------------------------------------------
# generate


@pytest.mark.parametrize("preset", PRESETS)
def test_generate_prompts_of_different_lengths_match_each_alone(preset):
    model = build(preset)
    prompts = [tokens(1, n, seed=n)[0] for n in (3, 9, 1, 6)]
    together = generate(model, prompts, 6, temperature=0)
    for prompt, out in zip(prompts, together):
        alone = generate(model, prompt, 6, temperature=0)
        assert torch.equal(out, alone)
        assert torch.equal(out[:prompt.numel()], prompt) and out.numel() == prompt.numel() + 6


def test_generate_input_forms():
    model = build("mamba")
    batch = tokens(3, 5)
    out = generate(model, batch, 4, temperature=0)
    assert out.shape == (3, 9) and torch.equal(out[:, :5], batch)
    as_list = generate(model, list(batch), 4, temperature=0)
    assert torch.equal(torch.stack(as_list), out)
    assert torch.equal(generate(model, batch[1].tolist(), 4, temperature=0), out[1])
    assert torch.equal(model.generate(batch[2], 4, temperature=0), out[2])
    with pytest.raises(ValueError, match="token ids must lie in"):
        generate(model, [1, 2, 999], 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1, 2], 0)


def test_generate_is_deterministic_with_a_seed():
    model = build("jamba")
    prompts = [tokens(1, 4)[0], tokens(1, 7)[0]]
    kwargs = dict(temperature=1.0, top_k=50, top_p=0.95)
    first = generate(model, prompts, 12, seed=3, **kwargs)
    again = generate(model, prompts, 12, seed=3, **kwargs)
    other = generate(model, prompts, 12, seed=4, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    gen = torch.Generator().manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(first, generate(model, prompts, 12, generator=gen, **kwargs)))


def test_eos_stops_each_row_and_is_kept():
    model = build("zamba")
    prompts = [tokens(1, n, seed=n)[0] for n in (2, 5, 8)]
    free = generate(model, prompts, 10, temperature=0)
    eos = int(free[0][2 + 3])  # row 0's fourth new token
    stopped = generate(model, prompts, 10, temperature=0, eos_id=eos)
    for prompt, row, out in zip(prompts, free, stopped):
        new = row[prompt.numel():]
        hits = (new == eos).nonzero()
        keep = int(hits[0]) + 1 if len(hits) else new.numel()
        assert torch.equal(out, row[:prompt.numel() + keep])
    assert stopped[0][-1] == eos and stopped[0].numel() <= 2 + 4
    batch = generate(model, torch.stack([prompts[2], prompts[2].flip(0)]), 10, temperature=0, eos_id=eos)
    assert batch.shape[0] == 2 and batch.shape[1] <= 18  # a 2-D batch: rows done early are filled with eos


def test_callback_streams_every_new_token():
    model = build("samba")
    prompts = [tokens(1, 2)[0], tokens(1, 6)[0]]
    seen: list[list] = [[], []]

    def callback(step_tokens):
        assert len(step_tokens) == 2
        for row, t in enumerate(step_tokens):
            if t is not None:
                seen[row].append(t)

    out = generate(model, prompts, 5, temperature=0.8, seed=0, callback=callback)
    for prompt, row, streamed in zip(prompts, out, seen):
        assert streamed == row[prompt.numel():].tolist()


def test_sampling_filters():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0), greedy)
    assert torch.equal(sample_next(logits, top_k=1), greedy)
    assert torch.equal(sample_next(logits, top_p=1e-6), greedy)
    gen = torch.Generator().manual_seed(0)
    top3 = logits.topk(3, dim=-1).indices
    for _ in range(50):
        draw = sample_next(logits, temperature=2.0, top_k=3, generator=gen)
        assert (top3 == draw[:, None]).any(-1).all()
    probs = logits.softmax(-1)
    ordered, order = probs.sort(-1, descending=True)
    nucleus = [set(order[r, :int((ordered[r].cumsum(0) < 0.5).sum()) + 1].tolist()) for r in range(4)]
    for _ in range(50):
        draw = sample_next(logits, top_p=0.5, generator=gen)
        assert all(int(draw[r]) in nucleus[r] for r in range(4))
    counts = torch.bincount(torch.stack([sample_next(logits[:1, :4], generator=gen) for _ in range(4000)]).flatten(),
                            minlength=4).float() / 4000
    torch.testing.assert_close(counts, logits[0, :4].softmax(-1), atol=0.03, rtol=0)  # draws follow softmax


# ---------------------------------------------------------------------------------------------------
# The contract for third-party layers


@dataclass
class DecayConfig:
    decay: float = 0.7


@dataclass
class DecayState:
    h: Tensor  # (batch, d_model)


@register_layer("test_decay", config=DecayConfig, state="recurrent", override=True)
class Decay(nn.Module):
    """Test layer: h_t = a h_{t-1} + (1 - a) x_t, out_t = W h_t (an exponential moving average)."""

    def __init__(self, d_model: int, config: DecayConfig):
        super().__init__()
        self.decay = config.decay
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size, max_length, device=None, dtype=None):
        return DecayState(torch.zeros(batch_size, self.proj.in_features, device=device,
                                      dtype=dtype or self.proj.weight.dtype))

    def forward(self, x, state=None):
        h = state.h if state is not None else x.new_zeros(x.shape[0], x.shape[2])
        outs = []
        for t in range(x.shape[1]):
            h = self.decay * h + (1 - self.decay) * x[:, t]
            outs.append(h)
        if state is not None:
            state.h.copy_(h)
        return self.proj(torch.stack(outs, dim=1))


@register_layer("test_forgetful", config=DecayConfig, state="recurrent", override=True)
class Forgetful(Decay):
    """Test layer declaring a state without init_state."""

    init_state = None


@dataclass
class GrowingState:
    seen: list  # a Python list of past inputs: its shapes change every step


@register_layer("test_growing", config=DecayConfig, state="kv", override=True)
class Growing(Decay):
    """Test layer with a growing state and no fixed-shape mode."""

    def init_state(self, batch_size, max_length, device=None, dtype=None):
        return GrowingState([])


def test_cuda_graph_refusal_names_the_sublayer_without_fixed_shapes():
    model = HybridLM(ModelConfig(d_model=8, layout="mlp test_growing")).eval()
    with pytest.raises(ValueError, match=r"sublayer 1 .*'test_growing'.*make_static"):
        make_static(model, model.init_state(1, 4))


@torch.no_grad()
@pytest.mark.parametrize("name", [n for n in LAYERS.names() if n not in ("test_forgetful", "test_growing")])
def test_every_registered_layer_decodes_like_its_parallel_forward(name):
    entry = LAYERS.get(name)
    try:
        torch.manual_seed(0)
        model = HybridLM(ModelConfig(d_model=32, layout=f"{name} mlp {name}")).eval()
    except (ConfigError, TypeError, ValueError) as err:
        pytest.skip(f"layer {name!r} does not build with default arguments: {err}")
    ids = tokens(2, 11)
    full = model(ids)
    state = model.init_state(2, 11)
    close(prefill(model, ids[:, :4], state, chunk_size=3), full[:, 3])
    close(torch.cat([model(ids[:, t:t + 1], state) for t in range(4, 11)], dim=1), full[:, 4:])
    assert entry.state_kind(model.layout[0].branches[0].config) in ("none", "kv", "kv_window", "recurrent")


@pytest.mark.parametrize("name", ["test_decay", "s4d", "moe"])
def test_layer_generates_prompts_of_different_lengths_exactly(name):
    if name not in LAYERS:
        pytest.skip(f"layer {name!r} is not registered yet")
    torch.manual_seed(0)
    model = HybridLM(ModelConfig(d_model=32, layout=f"({name} mlp attention {name}) x2")).eval()
    prompts = [tokens(1, n, seed=n)[0] for n in (2, 7)]
    together = generate(model, prompts, 5, temperature=0)
    assert all(torch.equal(o, generate(model, p, 5, temperature=0)) for p, o in zip(prompts, together))


def test_a_declared_state_without_init_state_is_reported():
    model = HybridLM(ModelConfig(d_model=32, layout="mlp test_forgetful"))
    with pytest.raises(TypeError, match=r"sublayer 1 .*'test_forgetful' declares inference state 'recurrent'"):
        generate(model, [1, 2, 3], 2)


# ---------------------------------------------------------------------------------------------------
# CLI


def cli_main(argv: list[str]) -> int:
    from hybrid.cli import main  # noqa: PLC0415 (needs omegaconf, like every config reader)

    return main(argv)


def run_cli(*argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = cli_main(list(argv))
    return code, buffer.getvalue()


@pytest.mark.parametrize("wrapped", [True, False], ids=["trainer-dict", "bare-state-dict"])
def test_cli_generate_from_checkpoint(tmp_path, wrapped):
    model = build("mamba")
    weights = model.state_dict()
    torch.save({"model": weights, "step": 10} if wrapped else weights, tmp_path / "ckpt.pt")
    config = str(ROOT / "configs" / "layouts" / "mamba.yaml")
    code, out = run_cli("generate", config, "model.d_model=32", "--checkpoint", str(tmp_path / "ckpt.pt"),
                        "--prompt-ids", "1, 2, 3", "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu")
    expected = generate(model, [1, 2, 3], 5, temperature=0)
    assert code == 0 and out.split() == [str(t) for t in expected.tolist()]
    code, out = run_cli("generate", config, "model.d_model=32", "--checkpoint", str(tmp_path / "ckpt.pt"),
                        "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "0", "--device", "cpu")
    expected = generate(model, list(b"hi"), 4, temperature=0)
    assert code == 0 and out == bytes(expected.tolist()).decode("utf-8", errors="replace") + "\n"


def test_cli_generate_rejects_a_checkpoint_of_another_model(tmp_path, capsys):
    torch.save(build("mamba", d_model=16).state_dict(), tmp_path / "other.pt")
    code = cli_main(["generate", str(ROOT / "configs" / "layouts" / "mamba.yaml"), "model.d_model=32",
                     "--checkpoint", str(tmp_path / "other.pt"), "--prompt", "x", "--device", "cpu"])
    assert code == 2 and "does not match the config's model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# GPU: bf16 decoding through the Triton step kernel, CUDA graphs


def _reference_error(model: HybridLM, ids: Tensor) -> tuple[float, float]:
    """Max |logits - fp32 reference| of the bf16 parallel forward and of bf16 step-by-step decoding."""
    with torch.no_grad():
        ref = model.float()(ids).float()
        model.bfloat16()
        parallel = model(ids).float()
        state = model.init_state(ids.shape[0], ids.shape[1])
        steps = torch.cat([model(ids[:, t:t + 1], state) for t in range(ids.shape[1])], dim=1).float()
    return (parallel - ref).abs().max().item(), (steps - ref).abs().max().item()


# Small GPU models built without omegaconf (the GPU machine has none), one per kind of stack.
GPU_LAYERS = {"M": {"type": "mamba", "d_state": 16}, "A": {"type": "attention", "n_heads": 4},
              "N": {"type": "attention", "n_heads": 4, "rope_theta": None}, "F": {"type": "mlp", "expand": 4},
              # SDPA with a mask, not compiled FlexAttention (minutes of compilation for a test)
              "W": {"type": "attention", "n_heads": 4, "window": 5, "backend": "sdpa"},
              "MA": {"parallel": ["M", "A"]}}
GPU_LAYOUTS = {"mamba": "M x4", "jamba": "M F N F M F", "transformer": "(A F) x2", "samba": "M F W F",
               "falcon-h1": "(MA F) x2"}


def build_gpu(name: str) -> HybridLM:
    torch.manual_seed(0)
    config = ModelConfig(d_model=256, layers=GPU_LAYERS, layout=GPU_LAYOUTS[name])
    return HybridLM(config).cuda().eval()


@pytest.mark.cuda
@pytest.mark.parametrize("preset", list(GPU_LAYOUTS))
def test_gpu_bf16_decoding_matches_parallel_forward(preset):
    model = build_gpu(preset)
    ids = tokens(4, 70).cuda()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        full = model(ids)
        state = model.init_state(4, 70)
        logits = prefill(model, ids[:, :33], state, chunk_size=16)
        steps = torch.stack([model(ids[:, t:t + 1], state)[:, 0] for t in range(33, 70)], dim=1)
        # fp32 on the GPU, no TF32: the Triton scan and step kernels and SDPA agree to 1e-3
        torch.testing.assert_close(logits, full[:, 32], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(steps, full[:, 33:], atol=1e-3, rtol=1e-3)
        parallel_err, step_err = _reference_error(model, ids)
    assert step_err <= 2 * parallel_err + BF16_ATOL, (step_err, parallel_err)


@pytest.mark.cuda
@pytest.mark.parametrize("preset", list(GPU_LAYOUTS))
def test_gpu_generate_mixed_lengths_and_cuda_graph(preset):
    model = build_gpu(preset)
    prompts = [tokens(1, n, seed=n)[0].cuda() for n in (5, 17, 11)]
    together = generate(model, prompts, 8, temperature=0)
    for prompt, out in zip(prompts, together):
        assert torch.equal(out, generate(model, prompt, 8, temperature=0))
    model.bfloat16()
    eager = generate(model, prompts, 16, temperature=0.7, seed=1)
    graphed = generate(model, prompts, 16, temperature=0.7, seed=1, cuda_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(eager, graphed))


@pytest.mark.cuda
@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_every_preset_decodes_in_a_cuda_graph_as_eagerly(preset):
    """Each configs/layouts preset (d_model 64, bf16): graphed sampling gives the eager tokens, for
    prompts of three lengths."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = build(preset, d_model=64).cuda().bfloat16()
    prompts = [tokens(1, n, seed=n)[0].cuda() for n in (5, 17, 11)]
    eager = generate(model, prompts, 12, temperature=0.7, seed=1)
    graphed = generate(model, prompts, 12, temperature=0.7, seed=1, cuda_graph=True)
    assert all(torch.equal(a, b) for a, b in zip(eager, graphed))
